"""The job spec the API tests submit."""
SPEC = {"model": "builtin:tiny-random", "classes": [{"name": "cat"}, {"name": "dog"}], "num_images": 6,
        "generation": {"width": 16, "height": 16, "steps": 2, "batch_size": 2}, "export": {"formats": ["coco"]}}
