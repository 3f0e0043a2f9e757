"""Pure formats, no I/O policy: the job spec, records, prompts, a dataset folder's layout, export writers."""
