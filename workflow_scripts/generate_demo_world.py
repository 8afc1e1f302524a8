"""Rule generate_demo_world: write the procedurally generated VOC-layout demo dataset."""

from wsss.logs import logged
from wsss.stages.data import generate_demo_world

with logged(snakemake.log[0]):
    generate_demo_world(snakemake.output[0], snakemake.params.world)
