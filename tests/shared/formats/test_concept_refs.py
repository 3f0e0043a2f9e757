"""Over the API a spec names concepts and augment sources only as this tenant's uploads."""
from __future__ import annotations

from shared.formats.spec import parse_spec
from shared.sources.archives import check_spec_sources, spec_sources


def test_concept_folders_and_augment_paths_are_refused_over_the_api():
    spec = parse_spec({"model": "builtin:tiny-random", "method": "augment", "num_images": 1, "classes": [{"name": "a"}],
                       "concepts": ["/srv/concepts/x", "upload:" + "0" * 32],
                       "augment": {"source": {"path": "/srv/data"}}})
    assert [f for f, _ in spec_sources(spec)] == ["augment.source"]
    errors = dict(check_spec_sources(spec, None, None))
    assert "augment.source.path" in errors
    assert "concepts[0]" in errors and "zip the concept folder" in errors["concepts[0]"]
    assert "concepts[1]" not in errors  # an upload reference (its owner is checked against the store)
