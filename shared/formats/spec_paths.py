"""Which server files a spec may name when it comes over the API.

`dsgen run` reads whatever paths its user gives (their own machine). Over the API a spec
names only what the server offers (its models and adaptors) or what the tenant owns; a path
on the server is refused whatever it points at, so the answer never tells whether it exists.

The fields that can carry a path are marked in `shared.formats.spec` with `SERVER_PATH`; this module
walks every marked field of a spec, so a new path field is refused over the API until a rule
here allows something for it (e.g. a tenant's uploaded source).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from pydantic import BaseModel

from shared.formats.model_meta import BUILTIN_PREFIX, BuiltinNameError, builtin_adaptor_ids, builtin_name

NOT_OVER_API = "paths on the server are not accepted over the API"


def path_fields(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted field, value) of every set path-carrying field of a spec, nested ones included."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        where = f"{prefix}{name}"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("x-server-path") and isinstance(value, str):
            yield where, value
        elif isinstance(value, BaseModel):
            yield from path_fields(value, f"{where}.")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from path_fields(item, f"{where}.{i}.")


def _model_rule(value: str, models: list[str], adaptors: list[str]) -> str | None:
    if value in models:
        return None
    return f"model {value!r} is not served here; use one of {models} (the server's DSGEN_MODELS)"


def _adaptor_rule(value: str, models: list[str], adaptors: list[str]) -> str | None:
    if value.startswith(BUILTIN_PREFIX):
        try:
            builtin_name(value)
        except BuiltinNameError as err:
            return f"{err}; adaptors on this server: {adaptors}"
        if value in adaptors:
            return None
        return f"adaptor {value!r} is not offered here; use one of {adaptors} (or leave it out for the model's own)"
    return f"{NOT_OVER_API}; use one of this server's adaptors {adaptors} (or leave it out for the model's own)"


def _captions_rule(value: str, models: list[str], adaptors: list[str]) -> str | None:
    return f"{NOT_OVER_API}; send the captions in the spec with prompts.source: list and prompts.prompts: [...]"


def _sources_rule(value: str, models: list[str], adaptors: list[str]) -> str | None:
    return (f"{NOT_OVER_API}; source images must be a dataset this tenant owns, and uploads of source images "
            "are not available on this server yet (run image2image locally with `dsgen run`)")


# field (dotted, list positions as *) -> rule(value, served models, offered adaptors) -> error or None
Rule = Callable[[str, list[str], list[str]], str | None]
RULES: dict[str, Rule] = {
    "model.id": _model_rule,
    "labels.adaptor": _adaptor_rule,
    "prompts.captions_file": _captions_rule,
    "image2image.images": _sources_rule,
    "image2image.coco": _sources_rule,
}


def _rule_for(field: str) -> Rule | None:
    generic = ".".join("*" if part.isdigit() else part for part in field.split("."))
    return RULES.get(field) or RULES.get(generic)


def check_api_paths(spec: BaseModel, models: list[str], adaptors: list[str] | None = None) -> list[tuple[str, str]]:
    """(field, message) for each path field of a spec submitted over the API that names
    something other than what the server offers; a field without a rule is refused."""
    offered = builtin_adaptor_ids() if adaptors is None else list(adaptors)
    errors = []
    # With image2image.upload, images/coco name places inside the tenant's own archive.
    in_upload = ({"image2image.images", "image2image.coco"}
                 if getattr(getattr(spec, "image2image", None), "upload", None) else set())
    for field, value in path_fields(spec):
        if field in in_upload:
            if value.startswith(("/", "\\")) or ".." in value.replace("\\", "/").split("/"):
                errors.append((field, "with upload: a folder or file inside the uploaded archive (relative, no '..')"))
            continue
        rule = _rule_for(field)
        message = rule(value, list(models), offered) if rule else f"{NOT_OVER_API} ({field})"
        if message:
            errors.append((field, message))
    return errors

