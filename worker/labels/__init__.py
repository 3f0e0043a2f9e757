"""Labels (stage 5): from captured attention to semantic maps, instances, RLE and polygons; the filters
that judge samples after labelling (and FreeMask's segmenter they use). Boxes from features: `worker.adaptor`."""
