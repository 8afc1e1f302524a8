"""CLIP for CLIP-ES: loading (``factory``), preprocessing (``transform``) and the image token path (``transformer``)."""
