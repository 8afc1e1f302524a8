# Method kind excel (ExCEL, CVPR 2025), training-free: an attribute bank per descriptor set (cached under
# attributes/<key>/), then one rule per shard that writes the method contract: {method}/cams/{split}/{shard}.h5.

from wsss.methods import excel

EXCEL = instances_of(METHODS, "excel")
# The descriptor JSON or released bank file of each instance (checked while parsing: check_methods).
EXCEL_SOURCES = {
    name: excel.descriptor_file(name, METHODS[name], DATASET["kind"])
    or excel.bank_file(name, METHODS[name])
    for name in EXCEL
}
# Instances whose bank settings are equal share one bank, keyed by their digest.
EXCEL_BANKS = {
    name: excel.bank_key(METHODS[name], config["clip"], list(DATASET_CLASSES), EXCEL_SOURCES[name])
    for name in EXCEL
}
# Bank key -> the first instance (by name) with that bank, whose settings the bank rule reads.
EXCEL_BANK_OWNER = {key: name for name, key in sorted(EXCEL_BANKS.items(), reverse=True) if key}


rule excel_attribute_bank:
    input:
        # a user's file (the demo's own set is part of the package, keyed by its bytes)
        descriptors=lambda wc: [
            path
            for path in [EXCEL_SOURCES[EXCEL_BANK_OWNER[wc.bank_key]]]
            if path != excel.DEMO_DESCRIPTORS
        ],
        clip=clip_input,
        checked=checked_manifests,
    output:
        f"{OUT}/attributes/{{bank_key}}/bank.h5",
    log:
        f"{OUT}/logs/excel_attribute_bank/{{bank_key}}.log",
    wildcard_constraints:
        bank_key=one_of(EXCEL_BANK_OWNER),
    conda:
        "../../envs/wsss.yaml"
    threads: threads_of("excel_attribute_bank", 2)
    resources:
        gpu=GPU,
        mem_mb=res("excel_attribute_bank", "mem_mb", 16000),
        runtime=res("excel_attribute_bank", "runtime", 30),
    params:
        attributes=lambda wc: settings(METHODS[EXCEL_BANK_OWNER[wc.bank_key]]["attributes"]),
        classes=list(DATASET_CLASSES),
        clip=settings(config["clip"]),
        hdf5=settings(config["hdf5"]),
        code=code_digest("excel_attribute_bank.py"),
    script:
        "../../workflow_scripts/excel_attribute_bank.py"


rule excel_cams:
    input:
        manifest=f"{OUT}/manifests/{{split}}.tsv",
        text=text_features_of,
        bank=lambda wc: (
            [f"{OUT}/attributes/{EXCEL_BANKS[wc.method]}/bank.h5"]
            if EXCEL_BANKS[wc.method]
            else []
        ),
        clip=clip_input,
    output:
        f"{OUT}/{{method}}/cams/{{split}}/{{shard}}.h5",
    log:
        f"{OUT}/{{method}}/logs/excel_cams/{{split}}/{{shard}}.log",
    benchmark:
        f"{OUT}/{{method}}/benchmarks/excel_cams/{{split}}/{{shard}}.tsv"
    wildcard_constraints:
        method=one_of(EXCEL),
    conda:
        "../../envs/wsss.yaml"
    threads: threads_of("excel_cams", 8)
    resources:
        gpu=GPU,
        mem_mb=lambda wc, attempt: res("excel_cams", "mem_mb", 16000) * attempt,
        runtime=res("excel_cams", "runtime", 120),
    params:
        clip=settings(config["clip"]),
        # the bank's own settings and files reach this rule through its input, keyed by their content
        method=lambda wc: settings(
            {
                "attributes": excel.enrichment_settings(METHODS[wc.method]),
                "cam": METHODS[wc.method]["cam"],
                "caa": METHODS[wc.method]["caa"],
            }
        ),
        shard_size=config["shard_size"],
        hdf5=settings(config["hdf5"]),
        code=code_digest("excel_cams.py"),
    script:
        "../../workflow_scripts/excel_cams.py"
