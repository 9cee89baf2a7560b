"""Training configs (ml_collections): default (shapes on CPU), coco, voc, folder, folder_cpu,
folder_finetune."""
