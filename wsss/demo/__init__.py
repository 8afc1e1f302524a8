"""The offline demo: a procedurally generated VOC-layout world (world) and a tiny CLIP trained on it (clip)."""
