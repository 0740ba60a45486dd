"""Every bad input is named in one line on stderr, the exit is non-zero, and what was finished
before stays as it was."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from vlmswap.cli import main
from vlmswap.checkpoint import CheckpointError, read_checkpoint
from vlmswap.hub import fetch
from vlmswap.study import load_study

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "config" / "mini.yaml"


def run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, no traceback
    return exit_.value.code, err


def _checkpoint(tmp_path) -> Path:
    path = tmp_path / "src" / "vit.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.arange(4096.0)}, path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_backbone_checkpoint_is_named_and_the_finished_result_stays(damage, tmp_path, capsys):
    fetched = tmp_path / "resources" / "vit-mini@cls.ckpt"
    fetch({"path": str(_checkpoint(tmp_path))}, fetched, log=lambda m: None)
    data = bytearray(fetched.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # bytes inside the tensor data: torch itself would load them as wrong weights
        data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
    fetched.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fetch it again"):
        read_checkpoint(fetched)

    result = tmp_path / "results" / "evals" / "cell" / "vqa-v2.json"
    result.parent.mkdir(parents=True)
    result.write_text('{"finished": true}')
    cell = load_study(MINI).cell_ids[0]
    code, err = run(["evaluate", "--config", MINI, "--cell", cell, "--checkpoint", fetched, "--llm", tmp_path / "llm",
                     "--model", tmp_path / "model", "--index", tmp_path / "index.json", "--out", result], capsys)
    assert code == 1 and str(fetched) in err and "fetch it again" in err
    assert result.read_text() == '{"finished": true}'


def test_a_checkpoint_with_an_unreadable_layout_is_named(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x02}q\x00(X\x05")  # a pickle cut short
    with pytest.raises(CheckpointError, match=r"model\.pkl: not a readable checkpoint"):
        read_checkpoint(path)


def test_a_download_whose_sha256_differs_keeps_the_fetched_file(tmp_path, capsys):
    source = _checkpoint(tmp_path)
    config = yaml.safe_load(MINI.read_text())
    config["backbones"]["vit-mini"]["checkpoints"]["cls"] = {"url": source.as_uri(), "sha256": "0" * 64}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "checkpoints" / "vit-mini@cls.ckpt"
    out.parent.mkdir()
    out.write_bytes(b"the file fetched before")
    code, err = run(["fetch-backbone", "--config", tmp_path / "study.yaml", "--backbone", "vit-mini",
                     "--objective", "cls", "--out", out], capsys)
    assert code == 1 and "sha256 mismatch" in err and source.as_uri() in err and "0" * 64 in err
    assert hashlib.sha256(source.read_bytes()).hexdigest() in err
    assert out.read_bytes() == b"the file fetched before"


def _instruct(tmp_path, records) -> tuple[Path, Path]:
    root = tmp_path / "llava"
    (root / "images").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "images" / "ok.png")
    (root / "mix.json").write_text(json.dumps(records))
    return root / "mix.json", root


TURNS = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}]


@pytest.mark.parametrize("bad,named", [
    ({"id": "r7", "image": "images/gone.png", "conversations": TURNS}, ["r7", "images/gone.png", "not found"]),
    ({"id": "r8", "conversations": [TURNS[0], TURNS[0]]}, ["r8", "turn 1", "'human'", "expected 'gpt'"]),
])
def test_an_instruction_record_that_cannot_be_trained_on_is_named(bad, named, tmp_path, capsys):
    json_path, root = _instruct(tmp_path, [{"id": "r1", "image": "images/ok.png", "conversations": TURNS}, bad])
    out = tmp_path / "prepared" / "instruct.json"
    code, err = run(["prepare-instruct", "--config", MINI, "--json", json_path, "--image-root", root, "--out", out],
                    capsys)
    assert code == 1 and str(json_path) in err and "record 1" in err
    assert all(n in err for n in named), err
    assert not out.exists()  # training never starts on a set that failed its check
    problems = json.loads(out.with_suffix(".problems.json").read_text())
    assert sum(len(problems[k]) for k in ("missing", "unreadable", "malformed")) == 1


def test_a_checked_instruction_set_records_paths_relative_to_itself(tmp_path, capsys):
    json_path, root = _instruct(tmp_path, [{"id": "r1", "image": "images/ok.png", "conversations": TURNS}])
    out = tmp_path / "prepared" / "instruct.json"
    main(["prepare-instruct", "--config", str(MINI), "--json", str(json_path), "--image-root", str(root),
          "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["json"] == "../llava/mix.json" and report["image_root"] == "../llava"
    assert report["n_records"] == 1 and report["n_multimodal"] == 1


MINI_ZOO = ROOT / "config" / "mini-zoo.yaml"


@pytest.mark.parametrize("backbone,arch,checkpoint,key,problem", [
    ("convnext-mini", "convnext_atto", {"timm": "convnext_atto.fb_in1kk"}, "checkpoints.cls.timm",
     "timm model 'convnext_atto' has no weight tag 'fb_in1kk' (did you mean convnext_atto.d2_in1k?); its tags: "
     "d2_in1k"),
    ("convnext-mini", {"model": "convnext_tinny"}, None, "arch",
     "unknown timm model 'convnext_tinny'; similar names: convnext_tiny, "),
    ("dinov2-hf-mini", {"model_type": "dinov2", "hiden_size": 64}, None, "arch",
     "Dinov2Config has no field 'hiden_size'; did you mean 'hidden_size'?"),
    ("dinov2-hf-mini", {"model_type": "dinov2", "hidden_size": "64"}, None, "arch",
     "Field 'hidden_size' expected int, got str (value: '64')")])
def test_validate_names_the_backbone_key_of_a_bad_generic_arch(backbone, arch, checkpoint, key, problem, tmp_path,
                                                               capsys):
    # the timm/hf model is built on the meta device: an arch or weight tag it cannot build is the
    # backbone's key, not the cell's (a tap the model lacks is the cell's: test_compare_your_encoder.py)
    study = yaml.safe_load(MINI_ZOO.read_text())
    study["backbones"][backbone]["arch"] = arch
    if checkpoint is not None:
        study["backbones"][backbone]["checkpoints"]["cls"] = checkpoint
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    code, err = run(["validate", "--config", config], capsys)
    assert code == 2
    assert f"vlmswap: config error: {config}: backbones.{backbone}.{key}: " in err
    assert problem in err


CELL = "vit-mini@cls@64@block-2@mlp2"


@pytest.mark.parametrize("argv,named", [
    (["train", "--cell", "vit-mini@cls@64@block-2@mlp4", "--checkpoint", "x", "--llm", "x", "--instruct-json", "x",
      "--image-root", "x", "--out", "x", "--state-dir", "x"],
     ["cells: no cell 'vit-mini@cls@64@block-2@mlp4'", "did you mean 'vit-mini@cls@64@block-2@mlp3'", "vlmswap cells"]),
    (["evaluate", "--cell", "bad@cell", "--checkpoint", "x", "--llm", "x", "--model", "x", "--index", "x", "--out", "x"],
     ["no cell 'bad@cell'"]),
    (["profile", "--cell", "bad@cell", "--llm", "x", "--out", "x"], ["no cell 'bad@cell'"]),
    (["collapse", "--cell", "bad@cell", "--checkpoint", "x", "--llm", "x", "--model", "x", "--index", "x", "--out", "x"],
     ["no cell 'bad@cell'"]),
    (["table", "--table", "nope", "--results", "r", "--out-csv", "a", "--out-md", "b"],
     ["tables: no table 'nope'", "mini, mini-objective, stage-ablation"]),
    (["fetch-benchmark", "--benchmark", "gqa", "--dest", "d", "--out", "o"],
     ["benchmarks: no benchmark 'gqa' in study 'mini'", "refcoco, vqa-v2"]),
    (["prepare-benchmark", "--benchmark", "vqav2", "--root", "r", "--out", "o"], ["did you mean 'vqa-v2'"]),
    (["fetch-backbone", "--backbone", "vit-mni", "--objective", "cls", "--out", "o"],
     ["backbones: no backbone 'vit-mni'", "did you mean 'vit-mini'"]),
    (["fetch-backbone", "--backbone", "vit-mini", "--objective", "det", "--out", "o"],
     ["backbones.vit-mini.checkpoints", "objective 'det'", "(allowed: cls)"]),
    (["pretrain-mini", "--backbone", "vit-mni", "--objective", "cls", "--world", "w", "--out", "o"],
     ["no backbone 'vit-mni'"]),
    (["probe", "--cell", CELL, "--checkpoint", "x", "--data", "cifar10=x", "--out", "o"],
     ["linear_probe.datasets", "'mini-classify'", "--data mini-classify=FOLDER", "given: cifar10"]),
    (["fetch-probe-dataset", "--dataset", "nope", "--dest", "d", "--out", "o"], ["'nope'", "cifar10, cifar100"]),
])
def test_an_unknown_id_on_the_command_line_is_named_with_what_exists(argv, named, tmp_path, capsys):
    code, err = run([argv[0], "--config", MINI, *argv[1:]], capsys)
    assert code == 2 and f"{MINI}: " in err, err
    assert all(n in err for n in named), err


def _vit_mini_weights() -> dict:
    from vlmswap.vision.registry import build_backbone
    from vlmswap.vlm import backbone_arch

    study = load_study(MINI)
    cell = study.cell(CELL)
    backbone = build_backbone(study.backbones[cell.backbone].family, backbone_arch(study, cell), cell.tap, cell.geometry)
    return backbone.official_module().state_dict()


@pytest.mark.parametrize("layout,named", [
    ("ddp", ["every key starts with 'module.'", "DistributedDataParallel", "strip that prefix"]),
    ("ema", ["unrecognized checkpoint container", "weights under 'model_ema'"]),
    ("shapes", ["size mismatch(es): cls_token (checkpoint [1, 1, 3], backbone"]),
    ("keys", ["missing key(s)", "unexpected key(s): extra.weight"]),
])
def test_a_backbone_checkpoint_that_does_not_fit_names_the_file(layout, named, tmp_path, capsys):
    weights = _vit_mini_weights()
    if layout == "ddp":
        checkpoint = {f"module.{k}": v for k, v in weights.items()}
    elif layout == "ema":
        checkpoint = {"model_ema": weights, "epoch": 3}
    elif layout == "shapes":
        checkpoint = {**weights, "cls_token": torch.zeros(1, 1, 3)}
    else:
        checkpoint = {**{k: v for k, v in list(weights.items())[1:]}, "extra.weight": torch.zeros(1)}
    path = tmp_path / "vit-mini@cls.ckpt"
    torch.save(checkpoint, path)
    code, err = run(["evaluate", "--config", MINI, "--cell", CELL, "--checkpoint", path, "--llm", tmp_path / "llm",
                     "--model", tmp_path / "model", "--index", tmp_path / "index.json", "--out", tmp_path / "r.json"],
                    capsys)
    assert code == 1 and err.startswith(f"vlmswap: {path}: "), err
    assert all(n in err for n in named) and "is it the checkpoint of vit-mini@cls" in err, err


@pytest.fixture(scope="module")
def mini_llm(tmp_path_factory) -> Path:
    from vlmswap.language import build_mini_llm

    folder = tmp_path_factory.mktemp("llm")
    (folder / "corpus.txt").write_text("USER: what color is it ASSISTANT: red blue green yes no\n" * 5)
    build_mini_llm(folder / "corpus.txt", folder / "llm", {"vocab_size": 96, "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2})
    return folder / "llm"


def _evaluate(tmp_path, capsys, cell, llm, model=None, index=None, out=None):
    checkpoint = tmp_path / "vit-mini@cls.ckpt"
    torch.save(_vit_mini_weights(), checkpoint)
    return run(["evaluate", "--config", MINI, "--cell", cell, "--checkpoint", checkpoint, "--llm", llm,
                "--model", model or tmp_path / "model", "--index", index or tmp_path / "index.json",
                "--out", out or tmp_path / "r.json"], capsys)


@pytest.fixture
def no_progress_bars():
    from transformers.utils import logging

    logging.disable_progress_bar()  # transformers' "Loading weights" bar on stderr is not ours to test
    yield
    logging.enable_progress_bar()


def test_a_model_trained_for_another_connector_is_named_with_its_cell(mini_llm, tmp_path, capsys, no_progress_bars):
    from safetensors.torch import save_file

    from vlmswap.language import load_llm, load_tokenizer
    from vlmswap.vlm import VLMHead

    model = tmp_path / "models" / CELL
    model.mkdir(parents=True)
    head = VLMHead("mlp2", 96, load_llm(mini_llm, load_tokenizer(mini_llm)))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(model / "model.safetensors"))
    (model / "train.json").write_text(json.dumps({"cell": CELL}))
    mlp3 = CELL.replace("@mlp2", "@mlp3")
    code, err = _evaluate(tmp_path, capsys, mlp3, mini_llm, model)
    assert code == 1 and err.startswith(f"vlmswap: {model / 'model.safetensors'}: "), err
    assert f"trained for cell {CELL}, not for cell {mlp3}" in err and "size mismatch for projector." in err, err
    assert f"pass the model of {mlp3} or retrain it" in err


@pytest.mark.parametrize("folder,named", [
    ("missing", "no such folder"),
    ("empty", "no tokenizer file (one of tokenizer.json"),
    ("no-config", "no config.json"),
    ("no-weights", "no weights (*.safetensors or *.bin)"),
])
def test_an_llm_folder_without_what_transformers_needs_is_named(folder, named, mini_llm, tmp_path, capsys):
    llm = tmp_path / folder
    if folder != "missing":
        llm.mkdir()
    if folder in ("no-config", "no-weights"):
        for f in mini_llm.iterdir():
            if not (f.name == "config.json" and folder == "no-config") and f.suffix != ".safetensors" * (folder == "no-weights"):
                (llm / f.name).write_bytes(f.read_bytes())
    code, err = _evaluate(tmp_path, capsys, CELL, llm)
    assert code == 1 and err.startswith(f"vlmswap: {llm}: {named}"), err
    assert "sentencepiece" not in err and "Repo id" not in err


def _prepared_index(tmp_path, benchmark="vqa-v2") -> Path:
    index = tmp_path / "benchmarks" / f"{benchmark}.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({"benchmark": benchmark, "subset": "full", "root": ".", "skipped": [], "examples": [
        {"id": "q1", "image": "a.png", "prompt": "What color?", "target": ["red"] * 10,
         "meta": {"answer_type": "other", "question_type": "what color"}}]}))
    return index


def test_a_truncated_benchmark_index_is_named_by_baselines_and_evaluate(mini_llm, tmp_path, capsys, no_progress_bars):
    from safetensors.torch import save_file

    from vlmswap.language import load_llm, load_tokenizer
    from vlmswap.vlm import VLMHead

    index = _prepared_index(tmp_path)
    index.write_text(index.read_text()[:40])
    code, err = run(["baselines", "--config", MINI, "--benchmark", "vqa-v2", "--index", index,
                     "--out", tmp_path / "baseline.json"], capsys)
    assert code == 1 and err.startswith(f"vlmswap: {index}: not a benchmark index") and "rerun prepare-benchmark" in err

    model = tmp_path / "models" / CELL
    model.mkdir(parents=True)
    head = VLMHead("mlp2", 96, load_llm(mini_llm, load_tokenizer(mini_llm)))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(model / "model.safetensors"))
    (model / "train.json").write_text(json.dumps({"cell": CELL, "provenance": {"fingerprint": "f"}}))
    finished = tmp_path / "results" / "refcoco.json"
    finished.parent.mkdir()
    finished.write_text('{"finished": true}')
    code, err = _evaluate(tmp_path, capsys, CELL, mini_llm, model, index=index, out=tmp_path / "results" / "vqa-v2.json")
    assert code == 1 and err.startswith(f"vlmswap: {index}: not a benchmark index"), err
    assert finished.read_text() == '{"finished": true}' and not (tmp_path / "results" / "vqa-v2.json").exists()


@pytest.mark.parametrize("verb", ["table", "findings", "figures"])
def test_a_truncated_result_or_training_record_is_named_by_the_reports(verb, tmp_path, capsys):
    results = tmp_path / "results"
    result = results / "evals" / CELL / "vqa-v2.json"
    result.parent.mkdir(parents=True)
    result.write_text('{"columns": {"vqa-v2": 5')
    outs = {"table": ["--table", "mini", "--out-csv", tmp_path / "t.csv", "--out-md", tmp_path / "t.md"],
            "findings": ["--out-md", tmp_path / "f.md", "--out-json", tmp_path / "f.json"],
            "figures": ["--out-dir", tmp_path / "figures"]}[verb]
    code, err = run([verb, "--config", MINI, "--results", results, *outs], capsys)
    assert code == 1 and err.startswith(f"vlmswap: {result}: not valid JSON") and "rerun the cell's evaluation" in err

    result.write_text(json.dumps({"columns": {"vqa-v2": 50.0}, "n_samples": 10, "n_skipped": 0}))
    record = results / "models" / CELL / "train.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"cell": "vit-')
    code, err = run([verb, "--config", MINI, "--results", results, *outs], capsys)
    assert code == 1 and err.startswith(f"vlmswap: {record}: not a training record") and "retrain the cell" in err


def test_a_correlation_over_too_few_finished_cells_says_how_many(tmp_path, capsys):
    code, err = run(["correlation", "--config", MINI, "--results", tmp_path / "results", "--out-csv", tmp_path / "c.csv",
                     "--out-png", tmp_path / "c.png"], capsys)
    assert code == 1 and err.startswith(f"vlmswap: {tmp_path / 'results'}: a correlation over"), err
    assert "needs at least 3 runs" in err and "only 0 of 9 do" in err and not (tmp_path / "c.csv").exists()


def test_the_baseline_of_one_benchmark_refuses_the_index_of_another(tmp_path, capsys):
    index = _prepared_index(tmp_path, "vqa-v2")
    out = tmp_path / "baselines" / "refcoco.json"
    code, err = run(["baselines", "--config", MINI, "--benchmark", "refcoco", "--index", index, "--out", out], capsys)
    assert code == 1 and err.startswith(f"vlmswap: {index}: the prepared index of 'vqa-v2', not of 'refcoco'"), err
    assert not out.exists()
    main(["baselines", "--config", str(MINI), "--benchmark", "vqa-v2", "--index", str(index), "--out", str(out)])
    assert json.loads(out.read_text())["columns"] == {"vqa-v2": 100.0}


def _validate(raw: dict, tmp_path, capsys) -> tuple[int, str]:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return run(["validate", "--config", config], capsys)


@pytest.mark.parametrize("backbone,arch,named", [
    ("vmamba-mini", "vmamba-small", "unknown VMamba architecture 'vmamba-small'; named ones: vmamba-t"),
    ("mambavision-mini", {"dim": 32, "in_dim": 32, "depth": [1, 1, 2, 1], "num_heads": [1, 2, 4, 4],
                          "window_size": [3, 3, 3, 3]}, "bad MambaVision arch"),
    ("vit-mini", {"patch_size": 16, "embed_dm": 96, "depth": 4, "num_heads": 4}, "unexpected keyword argument 'embed_dm'"),
    # a fused pair's member that no cell names itself: found through the pair's cell
    ("dino-mini", {"patch_size": 16, "embed_dim": 64, "depth": 4, "num_heads": 4, "reg_tokns": 4},
     "unexpected keyword argument 'reg_tokns'"),
    ("vitdet-mini", "vitdet-base", "unknown ViTDet architecture 'vitdet-base'"),
])
def test_validate_names_the_backbone_arch_its_family_cannot_build(backbone, arch, named, tmp_path, capsys):
    # caught by `vlmswap validate`, not by a bare ValueError in the pretraining or training job
    raw = yaml.safe_load(MINI.read_text())
    raw["backbones"][backbone]["arch"] = arch
    code, err = _validate(raw, tmp_path, capsys)
    assert code == 2 and f"study.yaml: backbones.{backbone}.arch: " in err and named in err


def test_validate_names_a_timm_arch_with_mean_but_no_std(tmp_path, capsys):
    raw = yaml.safe_load(MINI.read_text())
    raw["backbones"]["convnext-mini"] = {"family": "timm", "checkpoints": {"cls": {"mini": {}}},
                                         "arch": {"model": "convnext_atto", "mean": [0.5, 0.5, 0.5]}}
    raw["cells"].append({"backbone": "convnext-mini", "objective": "cls", "geometry": "64", "tap": "index2",
                         "connector": "mlp2"})
    code, err = _validate(raw, tmp_path, capsys)
    assert code == 2 and "backbones.convnext-mini.arch: " in err and "give both `mean` and `std`, or neither" in err


def test_validate_refuses_a_geometry_that_gives_no_visual_token(tmp_path, capsys):
    # an 8-pixel image has no 16-pixel patch: without this check the cell trains on nothing and its
    # load later fails as a checkpoint that "does not match"
    raw = yaml.safe_load(MINI.read_text())
    raw["cells"].append({"backbone": "vit-mini", "objective": "cls", "geometry": "8", "tap": "block-2",
                         "connector": "mlp2"})
    code, err = _validate(raw, tmp_path, capsys)
    assert code == 2
    assert "study.yaml: cells[7].geometry: vit-mini@cls@8@block-2@mlp2: backbone 'vit-mini' gives 0 visual tokens " \
           "at geometry 8" in err
    assert "use a larger geometry (the smallest square one that gives tokens: 16)" in err
    raw["cells"][-1]["geometry"] = "16x8"
    code, err = _validate(raw, tmp_path, capsys)
    assert code == 2 and "cells[7].geometry: vit-mini@cls@16x8@block-2@mlp2" in err
    raw["cells"][-1]["geometry"] = "16"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    main(["validate", "--config", str(tmp_path / "study.yaml")])
    assert "vit-mini@cls@16@block-2@mlp2: 1 visual tokens" in capsys.readouterr().out


@pytest.mark.parametrize("family,arch,tag", [("vit", "vit_tiny_patch16_224", "vit_tiny_patch16_224.augreg_in21kk"),
                                             ("maxvit", "maxvit_tiny_tf_224", "maxvit_tiny_tf_224.in9k")])
def test_validate_refuses_a_timm_tag_timm_does_not_know_in_any_family(family, arch, tag, tmp_path, capsys):
    """vit and maxvit load timm tags too; a bad one ended validate in timm's RuntimeError traceback."""
    raw = yaml.safe_load(MINI.read_text())
    raw["objectives"]["in21k"] = {"display": "IN21K", "kind": "classification"}
    raw["backbones"]["paper-tower"] = {"family": family, "arch": arch, "checkpoints": {"in21k": {"timm": tag}}}
    raw["cells"].append({"backbone": "paper-tower", "objective": "in21k", "geometry": "224",
                         "tap": "block-2" if family == "vit" else "stage3", "connector": "mlp2"})
    code, err = _validate(raw, tmp_path, capsys)
    assert code == 2 and "backbones.paper-tower.checkpoints.in21k.timm: " in err, err
    assert f"has no weight tag '{tag.partition('.')[2]}'" in err and "Traceback" not in err
