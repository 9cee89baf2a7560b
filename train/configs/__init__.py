"""Training configs (ml_collections): default (shapes on CPU), coco, voc, folder."""
