"""Datasets and data paths: WebDataset shards, COCO, RefCOCO*, Flickr30k Entities, LLaVA json and the
synthetic world. Import the submodule you need; nothing heavy is loaded here."""
