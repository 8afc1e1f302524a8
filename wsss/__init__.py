"""wsss: weakly supervised semantic segmentation with CLIP (CLIP-ES, SemPLeS) as a Snakemake pipeline."""

__version__ = "0.1.0"
