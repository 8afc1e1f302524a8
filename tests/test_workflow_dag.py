"""The DAG as Snakemake sees it: dry runs, config validation, method instances, shard counts (no job runs)."""

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.workflow_helpers import REPO, TINY, planned_jobs, planned_methods, snakemake, write_config

ALL_RULES = {"generate_demo_world", "manifest", "train_demo_clip", "text_features", "clip_es_gradcam", "clip_es_caa",
             "semples_phase1", "semples_match", "semples_prompts", "semples_refine", "semples_cams",
             "excel_attribute_bank", "excel_cams", "evaluate_cams", "crf", "par", "export_pseudo_masks", "evaluate_pseudo_masks", "train_segmenter", "predict",
             "export_predictions", "evaluate_segmenter", "summary", "per_class_iou", "rule_graph", "figures",
             "training_figure", "rule_times", "run_manifest", "all"}


def test_default_config_dry_run_lists_the_whole_dag_for_every_instance(tmp_path):
    result = snakemake(tmp_path, "-n", config=REPO / "config.yaml")
    jobs = planned_jobs(result)
    assert set(jobs) == ALL_RULES
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    instances = set(demo["methods"])
    kinds = {kind: {name for name, method in demo["methods"].items() if method["kind"] == kind}
             for kind in ("clip_es", "semples", "excel")}
    seeds = {name for name, method in demo["methods"].items()
             if method.get("pseudo_masks", {}).get("refiner") == "par"}
    with_segmenter = {name for name, method in demo["methods"].items() if method.get("segmenter", True)}
    assert {"clip_es", "semples", "excel"} <= with_segmenter and kinds["clip_es"] - with_segmenter, \
        "the demo runs the three kinds through the whole tail, and ablations that stop at the pseudo masks"
    assert kinds["semples"] - with_segmenter, "and SemPLeS's own stage-a-only ablation"
    assert seeds == {"excel_seeds"} and kinds["excel"] - with_segmenter - seeds, "ExCEL's seeds and ablations"
    n_shards = -(-demo["demo_world"]["n_train"] // demo["shard_size"])
    assert jobs["clip_es_gradcam"] == jobs["clip_es_caa"] == n_shards * len(kinds["clip_es"])
    assert jobs["semples_cams"] == n_shards * len(kinds["semples"])
    assert jobs["excel_cams"] == n_shards * len(kinds["excel"]) and jobs["excel_attribute_bank"] == 1
    assert jobs["crf"] == n_shards * len(instances - seeds) and jobs["par"] == n_shards * len(seeds)
    assert jobs["predict"] == -(-demo["demo_world"]["n_val"] // demo["shard_size"]) * len(with_segmenter)
    assert jobs["manifest"] == 2 and jobs["train_demo_clip"] == 1
    assert jobs["text_features"] == 2, "instances with equal text settings share one text-feature file (per kind here)"
    # the ablation differs from semples only in skipping stages b and c: it shares phase 1 and stage a
    assert (jobs["semples_phase1"], jobs["semples_match"], jobs["semples_prompts"], jobs["semples_refine"]) == (1, 1, 1, 1)
    methods = planned_methods(result)
    assert methods["crf"] == instances - seeds and methods["evaluate_cams"] == instances
    assert methods["train_segmenter"] == with_segmenter


def _stage_keys_planned(result, stage: str) -> set[str]:
    """The folder keys of one SemPLeS training stage in a dry run's job outputs."""
    return set(re.findall(rf"training/semples/{stage}/(\w+)/model\.pt", result.stdout + result.stderr))


def test_an_imported_phase1_model_replaces_phase1_training_keyed_by_its_digest(tmp_path):
    first, moved, other = tmp_path / "a" / "phase1.pth", tmp_path / "b" / "renamed.pth", tmp_path / "other.pth"
    for path, content in ((first, b"weights"), (moved, b"weights"), (other, b"other weights")):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)

    def plan(path, sha256=None):
        config = write_config(tmp_path / "imported.yaml",
                              methods={"semples": {"phase1": {"checkpoint": str(path), "sha256": sha256}}})
        return snakemake(tmp_path, "-n", config=config)

    result = plan(first, hashlib.sha256(b"weights").hexdigest())
    jobs = planned_jobs(result)
    assert "semples_phase1" not in jobs
    assert jobs["semples_match"] == jobs["semples_refine"] == 1
    assert str(first) in result.stdout, "stages a and c read the imported file"
    keys = _stage_keys_planned(result, "match")
    assert len(keys) == 1
    assert _stage_keys_planned(plan(moved), "match") == keys, "a moved copy keeps its stage keys"
    assert _stage_keys_planned(plan(other), "match") != keys, "other weights get other keys"
    trained = _stage_keys_planned(snakemake(tmp_path, "-n"), "match")
    assert trained and trained != keys


def test_prompt_ranking_joins_the_dag_only_for_auto_template(tmp_path):
    config = write_config(tmp_path / "auto.yaml", methods={"clip_es_logit": {"text": {"template": "auto"}}})
    jobs = planned_jobs(snakemake(tmp_path, "-n", config=config))
    assert jobs.get("select_prompt") == 1
    assert jobs["text_features"] == 3, "different text settings get their own text features (and the tiny ExCEL its own)"
    assert "select_prompt" not in planned_jobs(snakemake(tmp_path, "-n"))


def test_a_config_with_methods_replaces_the_default_instances(tmp_path):
    # config.yaml (always loaded first) has three instances; the tiny config names two, and only they run
    default = set(yaml.safe_load((REPO / "config.yaml").read_text())["methods"])
    tiny = set(yaml.safe_load(TINY.read_text())["methods"])
    assert default - tiny
    methods = planned_methods(snakemake(tmp_path, "-n"))
    assert methods["evaluate_cams"] == tiny
    assert methods["crf"] == tiny - {"excel"} and methods["par"] == {"excel"}, "the tiny ExCEL's seeds: PAR"


def test_gt_select_chooses_the_threshold_before_the_crf_and_marks_the_instance(tmp_path):
    config = write_config(tmp_path / "oracle.yaml", methods={"semples": {"gt_select": True}})
    result = snakemake(tmp_path, "-n", config=config)
    assert planned_methods(result)["select_oracle_threshold"] == {"semples"}
    assert "results/tiny/semples/tables/oracle_threshold.json" in result.stdout
    assert "select_oracle_threshold" not in planned_jobs(snakemake(tmp_path, "-n")), "label-free by default"


def test_segmenter_is_trained_without_an_evaluation_split(tmp_path):
    config = write_config(tmp_path / "no_eval.yaml", splits={"segmenter_eval": None})
    jobs = planned_jobs(snakemake(tmp_path, "-n", config=config))
    assert jobs["train_segmenter"] == 1
    assert "predict" not in jobs and "evaluate_segmenter" not in jobs


def test_output_root_is_a_config_key(tmp_path):
    config = write_config(tmp_path / "root.yaml", output_root="elsewhere/out")
    text = snakemake(tmp_path, "-n", config=config).stdout
    assert "elsewhere/out/tiny/clip_es/cams/train/00000.h5" in text
    assert "results/tiny" not in text


def test_workflow_works_as_a_module_of_another_workflow(tmp_path):
    direct = planned_jobs(snakemake(tmp_path / "direct", "-n"))
    caller = tmp_path / "caller"
    caller.mkdir()
    (caller / "Snakefile").write_text(
        f'configfile: "{TINY}"\n\n\n'
        f'module wsss:\n    snakefile:\n        "{REPO / "Snakefile"}"\n    config:\n        config\n\n\n'
        "use rule * from wsss\n"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(caller / "Snakefile"), "--directory",
                             str(caller), "--workflow-profile", "none", "-n", "all"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert planned_jobs(result) == direct


def test_conda_env_file_travels_with_the_rules():
    # Snakemake copies the env file under .snakemake/conda/, so it may not refer to any path of the checkout
    env = yaml.safe_load((REPO / "envs" / "wsss.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert not [line for line in pip if line.startswith(("-r", "-e", ".", "/"))]
    for rule_file in [*(REPO / "rules").glob("*.smk"), *(REPO / "rules").glob("*/*.smk")]:
        for line in rule_file.read_text().splitlines():
            if "envs/wsss.yaml" in line:
                path = line.strip().strip('",')
                assert (rule_file.parent / path).resolve() == REPO / "envs" / "wsss.yaml", rule_file


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"methods": {"clip_es": {"pseudo_masks": {"crf": {"itrs": 5}}}}}, "itrs"),
        ({"methods": {"clip_es": {"caa": {"box_border": "sideways"}}}}, "sideways"),
        ({"methods": {"clip_es": {"caa": {"sinkhorn_rounds": 0}}}}, "sinkhorn_rounds"),
        ({"methods": {"clip_es": {"kind": "clip_xx"}}}, "clip_xx"),
        ({"methods": {"tables": {"kind": "clip_es"}}}, "methods.tables"),
        ({"methods": {"clip_es": {"text": {"template": "no placeholder"}}}}, "methods.clip_es.text.template"),
        ({"methods": {"clip_es": {"cam": {"attn_layers": [3, 1]}}}}, "methods.clip_es.cam.attn_layers"),
        ({"shard_size": 0}, "shard_size"),
        ({"clip": {"model": "ViT-B-16", "pretrained": None}}, "clip.pretrained"),
        ({"splits": {"pseudo": "train_aug"}}, "splits.pseudo"),
        ({"dataset": {"kind": "voc"}}, "dataset.root"),
        ({"demo_clip": {"stepz": 3}}, "stepz"),
        ({"demo_clip": {"image_size": 90}}, "image_size"),
        ({"resources": {"crf": {"memory": 3}}}, "memory"),
        ({"resources": {"cams": {"mem_mb": 3}}}, "cams"),
        ({"segmenter": {"train": {"crop": 0}}}, "crop"),
        ({"segmenter": {"test_flip": False}}, "segmenter.train"),
        ({"method": "clip-es"}, "methods:"),
        ({"crf": {"iters": 3}}, "pseudo_masks.crf"),
        ({"methods": {"semples": {"weaktr": {"init": "deit"}}}}, "methods.semples.weaktr.checkpoint"),
        ({"methods": {"semples": {"weaktr": {"init": "deit", "checkpoint": "no/such/deit.pth"}}}}, "no/such/deit.pth"),
        ({"methods": {"semples": {"critic": {"model": "ViT-B-32", "pretrained": "missing/ViT-B-32.pt"}}}},
         "methods.semples.critic.pretrained"),
        ({"methods": {"semples": {"prompts": {"init": "zeros"}}}}, "zeros"),
        ({"methods": {"semples": {"phase1": {"checkpoint": "missing/WeakTr_CAM_Generation.pth"}}}},
         "methods.semples.phase1.checkpoint: file not found"),
        ({"methods": {"semples": {"phase1": {"checkpoint": str(REPO / "config.yaml"), "sha256": "0" * 64}}}},
         "methods.semples.phase1.sha256"),
        ({"methods": {"semples": {"precision": "fp16"}}}, "fp16"),
        ({"clip": {"model": "ViT-B-16", "pretrained": "missing/ViT-B-16.pt"}}, "clip.pretrained: file not found"),
        ({"segmenter": {"train": {"init_path": "missing/resnet18.pth"}}}, "segmenter.train.init_path: file not found"),
        ({"segmenter": {"train": {"init": "coco"}}}, "segmenter.train.init_path is required for init 'coco'"),
        ({"dataset": {"max_pixels": 0}}, "max_pixels"),
        ({"dataset": {"on_bad_image": "ignore"}}, "ignore"),
        ({"methods": {"semples": {"gt_select": True}}, "splits": {"cam_eval": []}}, "methods.semples.gt_select"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path, changes, message):
    config = write_config(tmp_path / "bad.yaml", **changes)
    result = snakemake(tmp_path, "-n", config=config, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_every_rule_digests_the_script_it_runs():
    # a rule's code digest must follow its own script's imports, or edits would rerun the wrong rule
    for rule_file in [*(REPO / "rules").glob("*.smk"), *(REPO / "rules").glob("*/*.smk")]:
        for block in re.split(r"\n(?=rule |use rule )", rule_file.read_text()):
            script = re.search(r'script:\s*"[./]*workflow_scripts/([\w.]+)"', block)
            digest = re.search(r'code=code_digest\("([\w.]+)"\)', block)
            if block.startswith("rule ") and (script or digest):
                assert script and digest and script.group(1) == digest.group(1), f"{rule_file.name}: {block[:60]}"


def _declared_threads(result) -> dict[str, set[int]]:
    """Rule -> the thread counts of its jobs in a dry run (a job block without a threads line has 1; a dry run
    shows the jobs of a group indented)."""
    threads: dict[str, set[int]] = {}
    for block in re.split(r"\n(?=[ ]*(?:local)?rule \w+:)", result.stdout + result.stderr):
        name = re.match(r"[ ]*(?:local)?rule (\w+):", block)
        if name:
            count = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
            threads.setdefault(name.group(1), set()).add(int(count.group(1)) if count else 1)
    return threads


def _torch_rules() -> dict[str, str]:
    """Rule name -> rule block, for every rule whose script runs torch (it enters compute_job)."""
    rules = {}
    for rule_file in [*(REPO / "rules").glob("*.smk"), *(REPO / "rules").glob("*/*.smk")]:
        for block in re.split(r"\n(?=rule |use rule )", rule_file.read_text()):
            name = re.match(r"rule (\w+):", block)
            script = re.search(r'script:\s*"[./]*workflow_scripts/([\w.]+)"', block)
            if not (name and script):
                continue
            source = (REPO / "workflow_scripts" / script.group(1)).read_text()
            if "compute_job(" in source:
                assert "compute_job(snakemake.threads" in source, f"{script.group(1)} sets torch threads from the rule"
                rules[name.group(1)] = block
    return rules


def _declared_resources(result) -> dict[str, dict[str, str]]:
    """Rule -> the resources line of its first job in a dry run (name -> value as printed)."""
    resources: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n(?=[ ]*(?:local)?rule \w+:)", result.stdout + result.stderr):
        name = re.match(r"[ ]*(?:local)?rule (\w+):", block)
        line = re.search(r"^\s+resources: (.+)$", block, re.MULTILINE)
        if name and line and name.group(1) not in resources:
            resources[name.group(1)] = dict(item.split("=", 1) for item in line.group(1).split(", "))
    return resources


class _FakeJob:
    """What the SLURM plugin's partition choice reads of a job: its name, threads and resources."""

    def __init__(self, name: str, threads: int, resources: dict):
        self.name, self.threads = name, threads
        self.resources = type("Resources", (dict,), {"__getattr__": dict.get})(resources)


def test_rules_state_their_own_threads_and_the_slurm_profile_names_no_rule(tmp_path):
    """A kind's rules need no profile entry: each states threads, memory and runtime, GPU rules gpu=GPU, and the
    SLURM plugin picks the partition from partitions.yaml (GPU jobs: the gpu partition; CPU jobs: cpu)."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    result = snakemake(tmp_path, "-n", "--cores", "64", config=REPO / "config.yaml")
    threads, resources = _declared_threads(result), _declared_resources(result)
    gpu_rules = set()
    for name, block in _torch_rules().items():
        assert re.search(rf'threads: threads_of\("{name}", \d+(, runs_alone=True)?\)', block), \
            f"rule {name} declares threads: through threads_of (resources.{name}.threads in the config)"
        assert f'res("{name}", "mem_mb"' in block and f'res("{name}", "runtime"' in block, name
        if "gpu=GPU" in block:
            gpu_rules.add(name)
    assert {"clip_es_gradcam", "text_features", "predict", "train_segmenter", "semples_phase1",
            "excel_cams"} <= gpu_rules
    assert threads["clip_es_gradcam"] == {8} and threads["clip_es_caa"] == {1}

    profile_dir = REPO / "profiles" / "slurm"
    profile = yaml.safe_load((profile_dir / "config.yaml").read_text())
    assert not {"set-resources", "set-threads", "groups"} & set(profile), "profiles/slurm lists rules by hand"
    components = {entry.split("=")[0] for entry in profile["group-components"]}
    declared_groups = set()
    for rule_file in [*(REPO / "rules").glob("*.smk"), *(REPO / "rules").glob("*/*.smk")]:
        declared_groups |= set(re.findall(r'^    group:\s+"(\w+)"', rule_file.read_text(), re.MULTILINE))
    assert declared_groups == components == {"cam_shards", "refined_shards"}

    partitions = read_partition_file(profile_dir / profile["slurm-partition-config"])
    logger = type("Logger", (), {"info": print, "warning": print, "debug": lambda *args: None})()
    for rule, figures in resources.items():
        job = _FakeJob(rule, max(threads.get(rule, {1})), {key: int(value) if value.isdigit() else value
                                                          for key, value in figures.items()})
        wanted = "gpu" if rule in gpu_rules else "cpu"
        assert (figures.get("gpu") == "1") == (rule in gpu_rules), f"{rule}: {figures}"
        assert get_best_partition(partitions, job, logger) == wanted, f"{rule} ({figures}) is not sent to {wanted}"


def test_the_cpu_profile_runs_torch_jobs_on_one_thread_each_after_the_demo_clip(tmp_path):
    # make demo's profile: on 2 cores, two one-thread jobs side by side beat one two-thread job
    import subprocess
    import sys

    cpu_profile = REPO / "profiles" / "cpu"
    # as `make demo` runs it: the embedded config, the profile's threads.yaml over it
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                             str(tmp_path), "-n", "--cores", "2", "--workflow-profile", str(cpu_profile)],
                            capture_output=True, text=True, check=True)
    threads = _declared_threads(result)
    torch_rules = set(_torch_rules())
    assert "set-threads" not in yaml.safe_load((cpu_profile / "config.yaml").read_text()), \
        "profiles/cpu lists rules by hand"
    scheduled = (torch_rules | {"crf"}) & set(threads) - {"train_demo_clip"}
    assert {"clip_es_gradcam", "semples_phase1", "excel_cams", "train_segmenter", "predict", "crf"} <= scheduled
    assert all(threads[rule] == {1} for rule in scheduled), {rule: threads[rule] for rule in scheduled}
    assert threads["train_demo_clip"] == {2}  # nothing can run beside it: both cores


def test_resources_threads_in_the_config_set_a_rules_threads(tmp_path):
    config = write_config(tmp_path / "threads.yaml", resources={"clip_es_gradcam": {"threads": 3}})
    threads = _declared_threads(snakemake(tmp_path, "-n", "--cores", "64", config=config))
    assert threads["clip_es_gradcam"] == {3}


def test_the_documented_module_caller_runs_with_a_partial_config(tmp_path):
    """docs/reuse.md's caller, with only run, output_root and shard_size: the module fills in its defaults."""
    import subprocess
    import sys

    text = (REPO / "docs" / "reuse.md").read_text()
    caller = re.search(r"```python\n(# Snakefile of your workflow\n.*?)```", text, re.S).group(1)
    assert '"/path/to/wsss/Snakefile"' in caller
    folder = tmp_path / "caller"
    folder.mkdir()
    (folder / "Snakefile").write_text(caller.replace("/path/to/wsss/Snakefile", str(REPO / "Snakefile")))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(folder / "Snakefile"), "--directory",
                             str(folder), "--workflow-profile", "none", "-n"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    jobs = planned_jobs(result)
    # the demo world's instances and DAG, at the caller's shard size, under the caller's run folder
    assert jobs["wsss_train_demo_clip"] == 1
    seeds = [m for m in demo["methods"].values() if m.get("pseudo_masks", {}).get("refiner") == "par"]
    assert jobs["wsss_crf"] == -(-demo["demo_world"]["n_train"] // 250) * (len(demo["methods"]) - len(seeds))
    assert "wsss_results/from_caller/manifest.json" in result.stdout


def test_a_partial_module_config_is_merged_over_the_defaults_and_methods_replace_them():
    from wsss.workflow_support import with_defaults

    defaults = yaml.safe_load((REPO / "config.yaml").read_text())
    merged_config = with_defaults({"run": "x", "demo_world": {"n_train": 7}}, REPO / "config.yaml")
    assert merged_config["run"] == "x" and merged_config["demo_world"]["n_train"] == 7
    assert merged_config["demo_world"]["n_val"] == defaults["demo_world"]["n_val"]
    assert merged_config["methods"] == defaults["methods"]
    only = with_defaults({"methods": {"mine": {"kind": "clip_es"}}}, REPO / "config.yaml")
    assert only["methods"] == {"mine": {"kind": "clip_es"}}


def _clone(destination: Path) -> Path:
    """A local clone of this checkout: the files git tracks or would track (no venv, no results)."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def test_snakedeploy_deploys_a_workflow_that_runs_its_config_template(tmp_path):
    """`snakedeploy deploy-workflow <clone> <dir> --tag <tag>` finds workflow/Snakefile and the config/ template;
    with the module pointed at the clone (what the local provider leaves to the user) it dry-runs the demo."""
    import subprocess
    import sys

    clone = _clone(tmp_path / "wsss")
    deployed = tmp_path / "deployed"
    snakedeploy = Path(sys.executable).parent / "snakedeploy"
    result = subprocess.run([str(snakedeploy), "deploy-workflow", str(clone), str(deployed), "--tag", "v0.1.0"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No config directory found" not in result.stderr and "traditional path" not in result.stderr
    assert (deployed / "config" / "config.yaml").read_text() == (REPO / "config" / "config.yaml").read_text()
    assert (deployed / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert (deployed / "profiles" / "slurm" / "config.yaml").is_file()
    module = (deployed / "workflow" / "Snakefile").read_text()
    assert 'configfile: "config/config.yaml"' in module and "use rule * from wsss" in module
    # the local provider writes the path inside the source repository; GitHub deployments get github(...)
    declared = '    snakefile: \n        "workflow/Snakefile"\n'
    assert declared in module
    (deployed / "workflow" / "Snakefile").write_text(
        module.replace(declared, f'    snakefile: \n        "{clone / "workflow" / "Snakefile"}"\n'))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "none"], cwd=deployed,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = planned_jobs(result)
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    # the whole demo DAG by default, under the template's run name
    assert jobs["deployment"] == 1 and jobs["generate_demo_world"] == 1 and jobs["summary"] == 1
    seeds = [m for m in demo["methods"].values() if m.get("pseudo_masks", {}).get("refiner") == "par"]
    assert jobs["crf"] == -(-demo["demo_world"]["n_train"] // demo["shard_size"]) * (len(demo["methods"]) - len(seeds))
    assert "results/deployed/manifest.json" in result.stdout
