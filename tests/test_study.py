"""Study config: grid expansion, cell ids, and validation errors that name file, key and fix."""

import copy
from pathlib import Path

import pytest
import yaml

from vlmswap.image import Geometry
from vlmswap.study import ConfigError, Cell, load_study, read_yaml, study_from_dict

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "config" / "mini.yaml"


@pytest.fixture(scope="module")
def mini_raw():
    return yaml.safe_load(MINI.read_text())


def test_mini_study_expands_to_its_cells():
    study = load_study(MINI)
    assert study.name == "mini"
    # seven grid cells, plus stages 2 and 4 of VMamba-mini from diagnostics.stage_ablation
    assert len(study.cells) == 9
    assert study.cell_ids[0] == "vit-mini@cls@64@block-2@mlp2"
    assert study.cell_ids[7:] == ["vmamba-mini@cls@64@stage2@mlp2", "vmamba-mini@cls@64@stage4@mlp2"]
    assert study.columns == ["vqa-v2", "refcoco"]
    assert [c.id for c in study.cells_of_table("mini")] == study.cell_ids[:7]
    assert study.tables["stage-ablation"].cells == ("vmamba-mini@cls@64@stage2@mlp2", "vmamba-mini@cls@64@stage3@mlp2",
                                                    "vmamba-mini@cls@64@stage4@mlp2")


def test_paper_study_has_the_99_cells_and_tables():
    study = load_study(ROOT / "config" / "experiments.yaml")
    # the paper's 99 rows, plus Appendix B's stage-2 and stage-4 cells of VMamba-T, MaxViT-T, MambaVision-T
    assert len(study.cells) == 105
    assert len(set(study.cell_ids)) == 105
    assert len(study.tables["stage-ablation"].cells) == 9
    assert {"table-1", "table-2", "table-5", "table-6"} <= set(study.tables)
    assert study.recipe(study.cells[0]).global_batch == 128


def test_cell_id_names_the_five_parts():
    cell = Cell("vmamba-t", "coco-det", Geometry(1333, 800), "stage3-outnorm", "mlp3")
    assert cell.id == "vmamba-t@coco-det@1333x800@stage3-outnorm@mlp3"


def test_per_cell_recipe_override(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["cells"][0]["recipe"] = {"lr": 5e-4}
    study = study_from_dict(raw, "x.yaml")
    assert study.recipe(study.cells[0]).lr == 5e-4
    assert study.recipe(study.cells[1]).lr == 1e-3


def test_a_global_batch_that_is_not_whole_micro_batches_on_every_gpu_fails_on_load(mini_raw):
    # train.schedule.accumulation_steps needs global_batch = per_device_batch x GPUs x steps: checked
    # on load, not inside the train job
    raw = copy.deepcopy(mini_raw)
    raw["recipe"].update(global_batch=8, per_device_batch=3)
    err = _error(raw)
    assert err.key_path == "recipe.per_device_batch"
    assert "per_device_batch 3 x 1 process (train_resources has no GPU) = 3 does not divide global_batch 8" in str(err)
    assert "multiple of 3 (e.g. 9)" in str(err)
    raw["recipe"].update(global_batch=8, per_device_batch=16)
    assert "16 is more than global_batch 8" in str(_error(raw))
    raw["recipe"].update(global_batch=16, per_device_batch=4)
    raw["train_resources"].update(nodes=2, gpus_per_node=4)
    err = _error(raw)
    assert "per_device_batch 4 x 8 GPUs (train_resources: 2 nodes x 4) = 32 is more than global_batch 16" in str(err)
    raw["train_resources"].update(nodes=1)
    study = study_from_dict(raw)  # 4 per device x 4 GPUs x 1 step
    assert study.recipe(study.cells[0]).global_batch == 16
    # a cell's own recipe is checked as well, and named
    raw["cells"][2]["recipe"] = {"per_device_batch": 3}
    err = _error(raw)
    assert err.key_path == "cells[2].recipe.per_device_batch" and "3 x 4 GPUs" in str(err)
    raw["cells"][2]["recipe"] = {"global_batch": 20}
    assert _error(raw).key_path == "cells[2].recipe.global_batch"


def test_a_recipe_without_a_needed_key_fails_on_load_naming_it(mini_raw):
    raw = copy.deepcopy(mini_raw)
    del raw["recipe"]["lr"]
    with pytest.raises(ConfigError, match=r"^config/bad.yaml: recipe.lr: the recipe has no 'lr'; add it"):
        study_from_dict(raw, "config/bad.yaml")


def _error(raw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        study_from_dict(raw, "config/bad.yaml")
    return info.value


def test_unknown_key_names_file_path_and_allowed_keys(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["recipe"]["learning_rate"] = 1e-3
    err = _error(raw)
    assert str(err).startswith("config/bad.yaml: recipe.learning_rate: unknown key 'learning_rate'")
    assert "lr" in str(err) and "allowed:" in str(err)


def test_wrong_enum_value_lists_the_allowed_values(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["cells"][2]["connector"] = "mlp4"
    err = _error(raw)
    assert err.key_path == "cells[2].connector"
    assert "mlp2, mlp3" in str(err)


def test_cell_with_unknown_backbone_suggests_the_close_name(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["cells"][0]["backbone"] = "vit-mnii"
    err = _error(raw)
    assert err.key_path == "cells[0].backbone" and "did you mean 'vit-mini'" in str(err)


def test_cell_objective_without_checkpoint(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["objectives"]["det"] = {"display": "DET", "kind": "detection"}
    raw["cells"][0]["objective"] = "det"
    err = _error(raw)
    assert err.key_path == "cells[0].objective" and "backbones.vit-mini.checkpoints" in str(err)


def test_unknown_family_and_tap(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["backbones"]["vit-mini"]["family"] = "resnet"
    assert _error(raw).key_path == "backbones.vit-mini.family"
    raw = copy.deepcopy(mini_raw)
    raw["cells"][0]["tap"] = "stage9"
    err = _error(raw)
    assert err.key_path == "cells[0].tap" and "block-2" in str(err)


def test_generic_families_take_any_well_formed_layer_index(mini_raw):
    # timm / hf taps name a layer of the model; reading a config checks their form only (no import of
    # the library), `vlmswap validate` then checks the layer exists (tests/test_compare_your_encoder.py)
    raw = copy.deepcopy(mini_raw)
    raw["backbones"]["convnext-t"] = {"family": "timm", "arch": "convnext_tiny", "checkpoints": {"cls": {"mini": {}}}}
    raw["cells"] = [{"backbone": "convnext-t", "objective": "cls", "geometry": "96", "tap": "", "connector": "mlp2"}]
    raw["tables"] = {}
    raw.pop("diagnostics")  # it names cells of the full grid
    for tap in ("index2", "index-1", "index0+prefix"):
        raw["cells"][0]["tap"] = tap
        assert study_from_dict(raw).cells[0].tap == tap
    raw["cells"][0]["tap"] = "stage3"
    err = _error(raw)
    assert err.key_path == "cells[0].tap" and "family 'timm' has no tap 'stage3'" in str(err)
    assert "allowed: index<N> or index<N>+prefix" in str(err)
    raw["backbones"]["convnext-t"]["family"] = "hf"
    raw["cells"][0]["tap"] = "index2"
    assert "allowed: layer<N> or layer<N>+prefix" in str(_error(raw))


def test_a_timm_weight_tag_and_the_arch_name_one_model(mini_raw):
    # the tag's model is what gets built (its pretrained_cfg gives the normalization): an arch naming
    # another model, or a misspelled one, would be ignored without a word
    raw = copy.deepcopy(mini_raw)
    tagged = {"cls": {"timm": "convnext_tiny.fb_in1k"}}
    for arch in ("convnext_tinny", "convnext_small", {"model": "convnext_small", "drop_path_rate": 0.1}):
        raw["backbones"]["convnext-t"] = {"family": "timm", "arch": arch, "checkpoints": tagged}
        err = _error(raw)
        name = arch if isinstance(arch, str) else arch["model"]
        assert err.key_path == "backbones.convnext-t.arch"
        assert (f"arch names {name!r} but its weights backbones.convnext-t.checkpoints.cls.timm are "
                "'convnext_tiny.fb_in1k', a 'convnext_tiny' checkpoint") in str(err)
        assert f"`arch: convnext_tiny`, or a {name} tag (timm.list_pretrained('{name}.*')" in str(err)
    for arch in ("convnext_tiny", "convnext_tiny.fb_in22k", {"model": "convnext_tiny", "drop_path_rate": 0.1}):
        raw["backbones"]["convnext-t"]["arch"] = arch
        assert study_from_dict(raw).backbones["convnext-t"].arch == arch
    raw["backbones"]["convnext-t"] = {"family": "vit", "arch": "vit_tiny_patch16_224",  # any family a tag builds
                                      "checkpoints": {"cls": {"timm": "vit_small_patch16_224.augreg_in1k"}}}
    assert _error(raw).key_path == "backbones.convnext-t.arch"


def test_duplicate_cells_and_bad_table_cell(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["cells"].append(dict(raw["cells"][0]))
    assert "duplicate cell" in str(_error(raw))
    raw = copy.deepcopy(mini_raw)
    raw["tables"]["mini"]["cells"][1] = "vit-mini@cls@64@block-2@mlp7"
    assert _error(raw).key_path == "tables.mini.cells[1]"


def test_source_needs_exactly_one_kind(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["backbones"]["vit-mini"]["checkpoints"]["cls"] = {"url": "https://x/y.pth", "path": "y.pth"}
    err = _error(raw)
    assert "exactly one of its kinds" in str(err) and err.key_path == "backbones.vit-mini.checkpoints.cls"


def test_missing_required_key_and_unknown_benchmark(mini_raw):
    raw = copy.deepcopy(mini_raw)
    del raw["recipe"]
    assert "recipe" in str(_error(raw))
    raw = copy.deepcopy(mini_raw)
    raw["benchmarks"]["vqa2"] = {"subset": "full"}
    err = _error(raw)
    assert err.key_path == "benchmarks.vqa2" and "did you mean 'vqa-v2'" in str(err)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(bad)


def test_a_checkpoint_source_that_is_a_missing_local_file_fails_validation(mini_raw, tmp_path, capsys):
    # caught before any job: a fetch job failing later would first lose the file Snakemake removes
    raw = copy.deepcopy(mini_raw)
    raw["backbones"]["vit-mini"]["checkpoints"]["cls"] = {"path": str(tmp_path / "nowhere" / "vit.pth")}
    error = _error(raw)
    assert error.key_path == "backbones.vit-mini.checkpoints.cls.path"
    assert "nowhere/vit.pth does not exist" in str(error) and "correct the path" in str(error)
    raw["backbones"]["vit-mini"]["checkpoints"]["cls"] = {"url": (tmp_path / "gone.pth").as_uri()}
    assert _error(raw).key_path == "backbones.vit-mini.checkpoints.cls.url"

    from vlmswap.cli import main

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--config", str(config)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "backbones.vit-mini.checkpoints.cls.url" in err and "gone.pth" in err

    (tmp_path / "gone.pth").write_bytes(b"x")  # once the file is there, the config is valid
    assert load_study(config).name == raw["study"]
def test_the_recipe_says_where_weight_decay_applies(mini_raw):
    raw = copy.deepcopy(mini_raw)
    del raw["recipe"]["weight_decay_applied_to"]
    err = _error(raw)
    assert err.key_path == "recipe" and "weight_decay_applied_to" in str(err) and "add it" in str(err)
    raw["recipe"]["weight_decay_applied_to"] = "all"
    err = _error(raw)
    assert err.key_path == "recipe.weight_decay_applied_to" and "matrices" in str(err) and "none" in str(err)


def test_stage_ablation_errors_name_the_key_and_the_fix(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["diagnostics"]["stage_ablation"]["taps"].append("stage5")
    with pytest.raises(ConfigError, match=r"diagnostics.stage_ablation.tokens: no expected token count for tap\(s\) \['stage5'\]"):
        study_from_dict(raw, "mini.yaml")
    raw["diagnostics"]["stage_ablation"]["tokens"]["stage5"] = 1
    with pytest.raises(ConfigError, match="diagnostics.stage_ablation.taps: family 'vmamba' .* has no tap 'stage5'"):
        study_from_dict(raw, "mini.yaml")
    raw = copy.deepcopy(mini_raw)
    raw["diagnostics"]["collapse"]["cells"][0] = "vit-mini@cls@64@block-2@mlp4"
    with pytest.raises(ConfigError, match=r"diagnostics.collapse.cells\[0\]: .* is not a cell of this study"):
        study_from_dict(raw, "mini.yaml")


def test_validate_checks_the_stage_token_counts(mini_raw):
    from vlmswap.diagnostics.stages import check_stage_tokens

    study = study_from_dict(mini_raw, "mini.yaml")
    assert [line.split(":")[1].strip() for line in check_stage_tokens(study)] == [
        "64 visual tokens (stage ablation, as expected)", "16 visual tokens (stage ablation, as expected)",
        "4 visual tokens (stage ablation, as expected)"]
    raw = copy.deepcopy(mini_raw)
    raw["diagnostics"]["stage_ablation"]["tokens"]["stage2"] = 784
    with pytest.raises(ConfigError, match="tokens.stage2: vmamba-mini@cls@64@stage2@mlp2 gives 64 visual tokens"):
        check_stage_tokens(study_from_dict(raw, "mini.yaml"))


def test_a_key_written_twice_fails_on_load_naming_its_path_and_lines(tmp_path):
    # YAML keeps the last of two equal keys without a word: a second `lr:` or a pasted backbone block
    # with the same id would silently replace the first
    text = MINI.read_text()
    twice = tmp_path / "twice.yaml"
    twice.write_text(text.replace("  lr: 1.0e-3", "  lr: 1.0e-3\n  lr: 2.0e-3", 1))
    with pytest.raises(ConfigError) as info:
        load_study(twice)
    lr_line = text.splitlines().index(next(line for line in text.splitlines() if line.startswith("  lr:"))) + 1
    assert info.value.key_path == "recipe.lr"
    assert str(info.value).startswith(f"{twice}: recipe.lr: duplicate key 'lr' at lines {lr_line} and {lr_line + 1}")
    twice.write_text(text.replace("  vmamba-mini:\n", "  vit-mini:\n", 1))
    with pytest.raises(ConfigError, match=r"backbones.vit-mini: duplicate key 'vit-mini' at lines \d+ and \d+"):
        load_study(twice)
    twice.write_text(text.replace("- {backbone: vit-mini, objective: cls,", "- {backbone: vit-mini, backbone: vit-mini, "
                                  "objective: cls,", 1))
    assert _load_error(twice).key_path == "cells[0].backbone"
    # a YAML merge key may repeat what its mapping overrides
    merged = tmp_path / "merged.yaml"
    merged.write_text(text.replace("recipe:\n", "base: &base {lr: 5.0e-4}\nrecipe:\n  <<: *base\n", 1))
    assert read_yaml(merged)["recipe"]["lr"] == 1e-3


def _load_error(path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_study(path)
    return info.value


def test_a_mini_llm_field_it_would_ignore_fails_on_load_with_the_close_name(mini_raw):
    raw = copy.deepcopy(mini_raw)
    raw["llm"]["source"]["mini"]["hiden_size"] = 64  # build_mini_llm would build hidden_size 128 without a word
    err = _error(raw)
    assert err.key_path == "llm.source.mini.hiden_size"
    assert "unknown field 'hiden_size'; did you mean 'hidden_size'?" in str(err) and "num_hidden_layers" in str(err)
    raw["llm"]["source"]["mini"].pop("hiden_size")
    raw["llm"]["source"]["mini"]["hidden_size"] = "128"
    assert "llm.source.mini.hidden_size: '128' is not a positive integer" in str(_error(raw))


def test_the_collapse_and_figure2_benchmark_must_be_one_the_study_evaluates(mini_raw):
    # the rules read that benchmark's prepared index and evaluation: a dry run would stop at a
    # MissingInputException
    for name in ("collapse", "figure2"):
        raw = copy.deepcopy(mini_raw)
        raw["diagnostics"][name]["benchmark"] = "refcocog"
        err = _error(raw)
        assert err.key_path == f"diagnostics.{name}.benchmark"
        assert "'refcocog' is not a benchmark of this study" in str(err) and "add refcocog under `benchmarks:`" in str(err)
        assert "(allowed: refcoco)" in str(err)
    raw = copy.deepcopy(mini_raw)  # without `benchmark:` it is refcoco, which this study would not evaluate
    del raw["benchmarks"]["refcoco"], raw["diagnostics"]["collapse"]["benchmark"]
    err = _error(raw)
    assert err.key_path == "diagnostics.collapse.benchmark"
    assert "'refcoco' (the default) is not a benchmark" in str(err) and "or remove diagnostics.collapse" in str(err)


def test_probed_llm_layers_must_exist_in_a_mini_llm(mini_raw):
    assert study_from_dict(mini_raw).llm.layers == 4
    assert load_study(ROOT / "config" / "experiments.yaml").llm.layers is None  # downloaded: its job checks
    raw = copy.deepcopy(mini_raw)
    raw["diagnostics"]["collapse"]["llm_layers"] = [0, 2, 5]
    err = _error(raw)
    assert err.key_path == "diagnostics.collapse.llm_layers[2]"
    assert "the mini LLM has no layer 5: it has 4 decoder layers (llm.source.mini.num_hidden_layers), so 0..4" in str(err)
    raw = copy.deepcopy(mini_raw)
    raw["diagnostics"]["figure2"]["layer"] = 3
    raw["diagnostics"]["collapse"]["llm_layers"] = [1, 2]
    del raw["llm"]["source"]["mini"]["num_hidden_layers"]  # build_mini_llm's default: 2
    err = _error(raw)
    assert err.key_path == "diagnostics.figure2.layer" and "has 2 decoder layers" in str(err) and "1..2" in str(err)


def test_a_number_yaml_reads_as_a_string_gets_the_way_to_write_it(tmp_path):
    # PyYAML (YAML 1.1) reads a float only with a dot and a signed exponent: `1e-3` is the string '1e-3'
    config = tmp_path / "lr.yaml"
    config.write_text(MINI.read_text().replace("  lr: 1.0e-3", "  lr: 1e-3", 1))
    err = _load_error(config)
    assert err.key_path == "recipe.lr"
    assert str(err).endswith("'1e-3' is not of type 'number': YAML reads 1e-3 as a string; write 1.0e-3")
    config.write_text(MINI.read_text().replace("  max_grad_norm: 1.0", "  max_grad_norm: 2E5", 1))
    assert str(_load_error(config)).endswith("YAML reads 2E5 as a string; write 2.0e+5")
    config.write_text(MINI.read_text().replace("  max_grad_norm: 1.0", "  max_grad_norm: 2.0e+5", 1))
    study = load_study(config)
    assert study.recipe(study.cells[0]).max_grad_norm == 2e5


def test_a_listed_cell_the_grid_lacks_says_to_add_it_under_cells(mini_raw):
    # well formed (the backbone has the objective, the family the tap): a cell to add, and the close one
    raw = copy.deepcopy(mini_raw)
    raw["tables"]["mini"]["cells"][0] = "vit-mini@cls@96@block-2@mlp2"
    err = _error(raw)
    assert err.key_path == "tables.mini.cells[0]"
    assert str(err).endswith("'vit-mini@cls@96@block-2@mlp2' is not a cell of this study; add it under `cells:` as "
                             "`- {backbone: vit-mini, objective: cls, geometry: \"96\", tap: block-2, connector: mlp2}`; "
                             "did you mean 'vit-mini@cls@64@block-2@mlp2'?")
    raw = copy.deepcopy(mini_raw)
    raw["diagnostics"]["profile"]["cells"][0] = "vitdet-mini@det@64@last-block@mlp3"
    assert "add it under `cells:`" in str(_error(raw))
    # a typo (no tap block-3 in family vit) keeps the close match only
    raw = copy.deepcopy(mini_raw)
    raw["tables"]["mini"]["cells"][0] = "vit-mini@cls@64@block-3@mlp2"
    assert str(_error(raw)).endswith("is not a cell of this study; did you mean 'vit-mini@cls@64@block-2@mlp2'?")
