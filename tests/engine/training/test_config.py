import re

import pytest

from engine.errors import UserError
from engine.training import config


def test_official_recipes():
    x4 = config.load("irn_x4")[0]
    assert (x4["crop"], x4["batch_size"], x4["lr"], x4["weight_decay"], x4["steps"]) == (144, 16, 2e-4, 1e-5, 500000)
    assert x4["lr_milestones"] == [100000, 200000, 300000, 400000] and x4["lr_gamma"] == 0.5
    assert (x4["grad_clip"], x4["seed"], x4["lambda_fit"], x4["lambda_ce"], x4["lambda_rec"]) == (10.0, 10, 16.0, 1, 1)
    assert config.load("irn_x2")[0]["lambda_fit"] == 4.0 and config.load("irn_x8")[0]["lambda_fit"] == 64.0
    assert config.load("demo")[0]["scale"] == 4


@pytest.mark.parametrize("name", sorted(p.stem for p in config.CONFIG_DIR.glob("*.toml")))
def test_every_config_has_every_key_documented_and_valid(name):
    cfg, help_texts = config.load(name)
    assert set(cfg) == set(config.KEYS)
    assert all(help_texts[key][1] for key in cfg), [k for k in cfg if not help_texts[k][1]]
    config.check(cfg)


def test_overrides_of_any_key_and_types():
    argv = ["--config", "irn_x2", "--lr", "1e-3", "--lr-milestones", "5,7", "--fast-kernels", "--crop", "96"]
    cfg, _ = config.resolve(argv)
    assert cfg.lr == 1e-3 and cfg.lr_milestones == (5, 7) and cfg.fast_kernels is True and cfg.crop == 96
    assert cfg.scale == 2 and cfg.config == "irn_x2"


def test_help_lists_every_key_by_section_with_its_value_and_comment(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config.resolve(["--config", "irn_x8", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    cfg, help_texts = config.load("irn_x8")
    sections = ["model", "data", "optimisation", "losses", "compression", "explosion tracking", "run", "profiling"]
    positions = [out.index(f"{section}: ") for section in sections]
    assert positions == sorted(positions)
    for key in cfg:
        section, comment = help_texts[key]
        start = out.index(f" {config.flag(key)} ", positions[sections.index(section.replace("_", " "))])
        entry = out[start : start + 40 + len(comment) + 100]
        assert " ".join(comment.split()) in entry, key
    assert re.search(r"--scale INT downscaling factor.*\[8\]", out)
    assert re.search(r"--lambda-fit FLOAT .*\[64\.0\]", out)


def test_unknown_key_names_close_matches():
    with pytest.raises(UserError, match="did you mean --batch-size"):
        config.resolve(["--batchsize", "4"])
    with pytest.raises(UserError, match="no config 'irn_x5'"):
        config.resolve(["--config", "irn_x5"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "-1"], "--batch-size -1: expected an integer >= 1"),
        (["--crop", "30"], "--crop 30: expected a multiple of the scale 4, at least 8"),
        (["--crop", "33"], "--crop 33: expected a multiple of the scale 4"),
        (["--scale", "8", "--crop", "8"], "--crop 8: expected a multiple of the scale 8, at least 16"),
        (["--scale", "5"], "--scale 5: expected a power of two (2, 4, 8, 16, ...) or 3"),
        (["--lr", "nan"], "--lr nan: expected a finite number > 0"),
        (["--lr", "0"], "--lr 0.0: expected a finite number > 0"),
        (["--lambda-fit", "inf"], "--lambda-fit inf: expected a finite number >= 0"),
        (["--grad-clip", "0"], "--grad-clip 0.0: expected a finite number > 0"),
        (["--steps", "0"], "--steps 0: expected an integer >= 1"),
        (["--workers", "-3"], "--workers -3: expected an integer >= 0"),
        (["--val-every", "-1"], "--val-every -1: expected an integer >= 0"),
        (["--checkpoint-every", "-5"], "--checkpoint-every -5: expected an integer >= 0"),
        (["--val-max-images", "0"], "--val-max-images 0: expected an integer >= 1"),
        (["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
        (["--precision", "fp8"], "--precision fp8: expected fp32, bf16 or fp16"),
        (["--compile", "fast"], "--compile fast: expected off, default"),
        (["--py-spy", "9:3"], "--py-spy 9:3: expected START:STOP"),
        (["--torch-profile", "x"], "--torch-profile x: expected START:STOP"),
        (["--time-limit", "soon"], "--time-limit soon: expected a duration"),
        (["--betas", "0.9"], "--betas 0.9: expected two numbers in [0, 1)"),
        (["--lr-milestones", "5,3"], "--lr-milestones 5,3: expected increasing step numbers"),
        (["--time-limit", "0"], "--time-limit 0: expected a duration"),
        (["--lr", "abc"], "invalid float value: 'abc'"),
        (["--lr-milestones", "5,x"], "expected comma-separated integers, got '5,x'"),
        (["--fast-kernels", "maybe"], "expected true or false, got 'maybe'"),
    ],
)
def test_every_bad_value_is_one_line_naming_flag_value_and_what_is_allowed(argv, message):
    with pytest.raises(UserError) as err:
        config.resolve(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_batch_must_split_evenly_across_ranks():
    with pytest.raises(UserError, match="--batch-size 6: expected an integer >= 1 divisible by the 4 ranks"):
        config.resolve(["--batch-size", "6"], world=4)
    assert config.resolve(["--batch-size", "8"], world=4)[0].batch_size == 8


def test_flag_types_come_from_the_key_not_from_the_file_s_value(tmp_path):
    (tmp_path / "odd.toml").write_text('base = "irn_x4"\n[optimisation]\nlr_milestones = []\ngrad_clip = 10\n')
    cfg, _ = config.resolve(["--config", str(tmp_path / "odd.toml"), "--lr-milestones", "100", "--grad-clip", "0.5"])
    assert cfg.lr_milestones == (100,) and cfg.grad_clip == 0.5


def test_config_files_are_checked_too(tmp_path):
    (tmp_path / "typo.toml").write_text('base = "irn_x4"\n[data]\nbatch_sise = 8\n')
    with pytest.raises(UserError, match="unknown key 'batch_sise'; did you mean batch_size"):
        config.resolve(["--config", str(tmp_path / "typo.toml")])
    (tmp_path / "twice.toml").write_text('base = "irn_x4"\n[data]\ncrop = 96\n[run]\ncrop = 48\n')
    with pytest.raises(UserError, match="key 'crop' appears twice"):
        config.resolve(["--config", str(tmp_path / "twice.toml")])
    (tmp_path / "typed.toml").write_text('base = "irn_x4"\n[data]\ncrop = "96"\n')
    with pytest.raises(UserError, match="--crop '96': expected a multiple of the scale 4"):
        config.resolve(["--config", str(tmp_path / "typed.toml")])


def test_a_flat_file_of_older_releases_still_loads(tmp_path):
    (tmp_path / "flat.toml").write_text('base = "irn_x4"\ncrop = 96  # 50% of the default\n')
    cfg, help_texts = config.load(tmp_path / "flat.toml")
    assert cfg["crop"] == 96 and help_texts["crop"] == ("data", "50% of the default")


def test_help_survives_a_percent_sign_in_a_comment(tmp_path, capsys):
    (tmp_path / "pct.toml").write_text('base = "irn_x4"\n[data]\ncrop = 96  # 50% of the default\n')
    with pytest.raises(SystemExit) as exit_info:
        config.resolve(["--config", str(tmp_path / "pct.toml"), "--help"])
    assert exit_info.value.code == 0 and "50% of the default [96]" in " ".join(capsys.readouterr().out.split())


def test_resume_never_reads_the_run_s_original_file(tmp_path):
    """The run's config.json is the whole truth: its config file may have moved or changed since."""
    run = {**config.load("irn_x2")[0], "config": str(tmp_path / "gone.toml"), "steps": 77}
    cfg, _ = config.resolve(["--resume", "r"], resumed_config=lambda name, runs_dir: dict(run))
    assert cfg.scale == 2 and cfg.steps == 77 and cfg.config == str(tmp_path / "gone.toml")


def test_resume_takes_the_run_s_config_and_refuses_another():
    run = {**config.load("irn_x2")[0], "config": "irn_x2", "steps": 77}
    del run["gpu_sample_ms"]  # a key added after the run was made takes its config's value
    cfg, _ = config.resolve(["--resume", "r", "--steps", "99"], resumed_config=lambda name, runs_dir: dict(run))
    assert cfg.scale == 2 and cfg.steps == 99 and cfg.gpu_sample_ms == 100 and cfg.config == "irn_x2"
    with pytest.raises(UserError, match="drop --config"):
        config.resolve(["--resume", "r", "--config", "irn_x4"], resumed_config=lambda name, runs_dir: dict(run))


@pytest.mark.parametrize(
    "args, remedy",
    [
        (["--growth", "16"], "a new run"),
        (["--lr", "1e-6"], "--init-from"),
        (["--lr-milestones", "5,10"], "--init-from"),
    ],
)
def test_resume_refuses_what_the_checkpoint_fixes(args, remedy):
    """The checkpoint holds the network and the optimiser's state: a new growth would fail to load, a new
    lr would be overwritten by the restored optimiser. Both are one line before anything is written."""
    run = {**config.load("irn_x2")[0], "config": "irn_x2"}
    with pytest.raises(UserError, match=f"{args[0]} cannot change on --resume.*{remedy}"):
        config.resolve(["--resume", "r", *args], resumed_config=lambda name, runs_dir: dict(run))
    same = {"--growth": "32", "--lr": "2e-4", "--lr-milestones": "100000,200000,300000,400000"}[args[0]]
    cfg, _ = config.resolve(
        ["--resume", "r", args[0], same], resumed_config=lambda name, runs_dir: dict(run)
    )  # unchanged: fine
    assert cfg.scale == 2


@pytest.mark.parametrize("text, seconds", [("11h50m", 42600), ("90m", 5400), ("30s", 30), ("2h", 7200), ("", None)])
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


def test_bad_duration_and_window():
    with pytest.raises(UserError, match="11h50m"):
        config.parse_duration("soon")
    with pytest.raises(UserError, match="START:STOP"):
        config.parse_window("5", "py-spy")
    assert config.parse_window("3:9", "py-spy") == (3, 9)


def test_a_file_cannot_set_the_config_s_own_name(tmp_path):
    (tmp_path / "based.toml").write_text('base = "irn_x4"\nconfig = "other"\n')
    (tmp_path / "whole.toml").write_text('config = "other"\n' + (config.CONFIG_DIR / "irn_x4.toml").read_text())
    for name in ("based", "whole"):
        with pytest.raises(UserError, match="unknown (config )?key 'config'"):
            config.resolve(["--config", str(tmp_path / f"{name}.toml")])


@pytest.mark.parametrize(
    "base, message",
    [
        ('"self"', "its base chain comes back to itself"),
        ('"other"', "its base chain comes back to itself"),
        ("4", "base = 4: expected the name or path of a config"),
        ('""', "base = '': expected the name or path of a config"),
    ],
)
def test_a_base_that_loops_or_is_not_a_name_is_one_line(tmp_path, base, message):
    (tmp_path / "self.toml").write_text(f"base = {base.replace('self', str(tmp_path / 'self.toml'))}\n")
    (tmp_path / "other.toml").write_text(f'base = "{tmp_path / "self.toml"}"\n')
    if base == '"other"':
        (tmp_path / "self.toml").write_text(f'base = "{tmp_path / "other.toml"}"\n')
    with pytest.raises(UserError, match=re.escape(message)):
        config.resolve(["--config", str(tmp_path / "self.toml")])


def test_paths_are_kept_absolute_and_the_data_cache_s_words_as_they_are(tmp_path, monkeypatch):
    """A run resumed from another folder finds its data, validation, weights and data cache where they were."""
    monkeypatch.chdir(tmp_path)
    paths = ["--data", "hr", "--val", "../val", "--init-from", "w.pth", "--data-cache", "cache"]
    cfg, _ = config.resolve(paths)
    assert (cfg.data, cfg.val, cfg.init_from, cfg.data_cache) == (
        str(tmp_path / "hr"), str(tmp_path / ".." / "val"), str(tmp_path / "w.pth"), str(tmp_path / "cache"),
    )  # fmt: skip
    assert config.resolve(["--data-cache", "off"])[0].data_cache == "off"
    assert config.resolve([])[0].data_cache == ""  # the default folder, chosen at each start
