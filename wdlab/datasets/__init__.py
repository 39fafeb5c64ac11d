"""The image datasets, each defined once (wdlab/datasets/registry.py): where its files come from, how to read them
into uint8 tensors, its normalisation and a generated stand-in for tests. See docs/datasets.md."""
