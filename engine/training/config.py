"""Configs: TOML files in configs/ whose every key is a command-line flag, checked once before any work.

A config's tables ([model], [data], ...) group its keys for --help; the keys themselves are flat and
unique (`batch_size` is `--batch-size`). `base = "irn_x4"` inherits another config and overrides some
of its keys (in tables or, as older files did, at the top level). The trailing comment of each key is
its help text. `resolve()` applies the command line; `check()` validates every value with a one-line
error naming the flag, the value and what is allowed. KEYS below says how each key is read and checked.
"""

import argparse
import difflib
import math
import re
import tomllib
from pathlib import Path

from engine.errors import UserError, parser
from engine.model.execution import COMPILE_MODES, PRECISIONS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT = "demo"
SCHEMA = "irn_x4"  # the config that every other is based on: it holds every key, its section and comment
# What a checkpoint fixes, so a resumed run keeps it: the network its weights have (another one is a
# new run), and the optimiser and schedule its state restores (others: a new run from its weights).
NETWORK_KEYS = ("scale", "blocks_per_stage", "growth", "clamp")
OPTIMISER_KEYS = ("lr", "betas", "weight_decay", "lr_milestones", "lr_gamma")
WINDOWS = ("py_spy", "torch_profile")  # step-window options: a bare flag takes DEFAULT_WINDOW
DEFAULT_WINDOW = "10:20"
RUN_FLAGS = {
    "--config": ("NAME", f"a config in configs/ by name, or a .toml path (default: {DEFAULT})"),
    "--resume": ("RUN", "continue a run folder (runs/run_N or its name) from its checkpoint, with its config"),
    "--name": ("NAME", "the new run folder's name under runs/ (default: the next run_N)"),
}


def flag(key):
    return "--" + key.replace("_", "-")


# --- how each key is read from the command line and checked -----------------------------------------


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def list_of(item, what):
    def parse(text):
        try:
            return [item(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


def integer(low):
    return lambda v, cfg: None if _is_int(v) and v >= low else f"an integer >= {low}"


def number(low, strict=False):
    def rule(v, cfg):
        ok = _is_number(v) and (v > low if strict else v >= low)
        return None if ok else f"a finite number {'>' if strict else '>='} {low:g}"

    return rule


def choice(*options):
    return lambda v, cfg: None if v in options else f"{', '.join(options[:-1])} or {options[-1]}"


def text(v, cfg):
    return None if isinstance(v, str) else 'a text (a folder path, or "")'


def boolean(v, cfg):
    return None if isinstance(v, bool) else "true or false"


def scale_factor(v, cfg):
    ok = _is_int(v) and (v == 3 or v >= 2 and v & (v - 1) == 0)
    return None if ok else "a power of two (2, 4, 8, 16, ...) or 3"


def crop_size(v, cfg):
    scale = cfg["scale"]
    ok = _is_int(v) and v % scale == 0 and v >= 2 * scale
    return None if ok else f"a multiple of the scale {scale}, at least {2 * scale}"


def batch_size(v, cfg):
    world = cfg["_world"]
    if _is_int(v) and v >= 1 and v % world == 0:
        return None
    return f"an integer >= 1 divisible by the {world} ranks" if world > 1 else "an integer >= 1"


def betas(v, cfg):
    ok = isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
    return None if ok else "two numbers in [0, 1), like 0.9,0.999"


def milestones(v, cfg):
    ok = isinstance(v, list) and all(_is_int(m) and m >= 1 for m in v) and v == sorted(set(v))
    return None if ok else "increasing step numbers >= 1, like 100000,200000 (or empty)"


def device(v, cfg):
    return None if isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else "auto, cpu, cuda or cuda:N"


def window(v, cfg):
    ok = isinstance(v, str) and _parses(lambda t: parse_window(t, ""), v)
    return None if ok else 'START:STOP step numbers with 0 <= START < STOP, or ""'


def duration(v, cfg):
    ok = isinstance(v, str) and _parses(parse_duration, v) and parse_duration(v) != 0
    return None if ok else 'a duration like 11h50m, 90m or 3600s, or "" for none'


def _parses(parse, value):
    try:
        parse(value)
        return True
    except UserError:
        return False


INTEGERS = list_of(int, "comma-separated integers")
NUMBERS = list_of(float, "comma-separated numbers")
KEYS = {  # key: (how its flag's text is read, the rule its value must meet)
    "scale": (int, scale_factor),
    "blocks_per_stage": (int, integer(1)),
    "growth": (int, integer(1)),
    "clamp": (float, number(0, strict=True)),
    "invertible_backprop": (parse_bool, boolean),
    "data": (str, text),
    "val": (str, text),
    "crop": (int, crop_size),
    "batch_size": (int, batch_size),
    "workers": (int, integer(0)),
    "val_every": (int, integer(0)),
    "val_max_images": (int, integer(0)),
    "steps": (int, integer(1)),
    "lr": (float, number(0, strict=True)),
    "betas": (NUMBERS, betas),
    "weight_decay": (float, number(0)),
    "lr_milestones": (INTEGERS, milestones),
    "lr_gamma": (float, number(0, strict=True)),
    "grad_clip": (float, number(0, strict=True)),
    "seed": (int, integer(0)),
    "lambda_fit": (float, number(0)),
    "lambda_ce": (float, number(0)),
    "lambda_rec": (float, number(0)),
    "z_scale": (float, number(0)),
    "explosion_factor": (float, number(0)),
    "explosion_window": (int, integer(1)),
    "max_bad_steps": (int, integer(1)),
    "explosion_batches_kept": (int, integer(0)),
    "device": (str, device),
    "precision": (str, choice(*PRECISIONS)),
    "fast_kernels": (parse_bool, boolean),
    "compile": (str, choice("off", *COMPILE_MODES)),
    "cudnn_benchmark": (parse_bool, boolean),
    "tf32": (parse_bool, boolean),
    "checkpoint_every": (int, integer(0)),
    "checkpoints_kept": (int, integer(1)),
    "time_limit": (str, duration),
    "init_from": (str, text),
    "py_spy": (str, window),
    "py_spy_native": (parse_bool, boolean),
    "torch_profile": (str, window),
    "gpu_sample_ms": (int, integer(1)),
    "tensorboard": (parse_bool, boolean),
}


def check(cfg, world=1):
    """Every value against its rule; the first bad one is a one-line UserError."""
    missing = [k for k in KEYS if k not in cfg]
    if missing:
        raise UserError(f'the config has no {", ".join(missing[:3])}; base it on another: base = "{SCHEMA}"')
    unknown = [k for k in cfg if k not in KEYS and k != "config"]
    if unknown:
        raise UserError(f"unknown config key {unknown[0]!r}{_suggestion(unknown[0], KEYS)}")
    context = {**cfg, "_world": world}
    for key, (read, rule) in KEYS.items():
        if key == "crop" and scale_factor(cfg["scale"], context):
            continue  # the scale's own message comes first
        allowed = rule(cfg[key], context)
        if allowed:
            quoted = isinstance(cfg[key], str) and read is not str  # a number written as "96" in a file
            raise UserError(f"{flag(key)} {repr(cfg[key]) if quoted else shown(cfg[key])}: expected {allowed}")


def shown(value):
    """A value as it is typed on the command line: lists comma-separated, true/false, the empty text as ""."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return '""' if value == "" else str(value)


# --- reading config files --------------------------------------------------------------------------


def config_path(name_or_path):
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise UserError(f"no config {str(name_or_path)!r}; choose one of {', '.join(names)} or give a .toml path")
    return path


def load(name_or_path):
    """(config, {key: (section, help text)}) of a config file and its `base` chain."""
    path = config_path(name_or_path)
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path} is not valid TOML ({err})") from None
    base = tables.pop("base", None)
    cfg, help_texts = load(base) if base else ({}, {})
    comments = key_comments(path)
    seen = set()
    for key, value, section in _entries(tables):
        if key == "base":
            raise UserError(f'{path}: put base = "..." at the top of the file, before any [section]')
        if key in seen:
            raise UserError(f"{path}: key {key!r} appears twice; each key belongs to one section")
        if base and key not in cfg:
            raise UserError(f"{path}: unknown key {key!r}{_suggestion(key, cfg)}")
        seen.add(key)
        cfg[key] = value
        base_section, base_text = help_texts.get(key, (section, ""))
        help_texts[key] = (base_section, comments.get(key) or base_text)
    return cfg, help_texts


def _entries(tables):
    """(key, value, section) of a TOML document's keys: those of its tables, and top-level ones."""
    for name, value in tables.items():
        if isinstance(value, dict):
            yield from ((key, v, name) for key, v in value.items())
        else:
            yield name, value, "other"


def key_comments(path):
    """{key: its trailing comment} from a TOML file's lines (tomllib drops comments)."""
    comments = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"\s*([A-Za-z_]\w*)\s*=", line)
        if not match:
            continue
        # The comment starts at the first '#' that is not inside the value: the first cut that parses.
        for pos in (i for i, ch in enumerate(line) if ch == "#"):
            try:
                tomllib.loads(line[:pos])
            except tomllib.TOMLDecodeError:
                continue
            comments[match[1]] = line[pos + 1 :].strip()
            break
    return comments


def _suggestion(key, known):
    close = difflib.get_close_matches(key, list(known), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


# --- the command line ------------------------------------------------------------------------------


def _flag_parser(cfg, help_texts, prog, origin):
    """The full parser: run flags, then every config key grouped by its section, showing its value."""
    about = f"Every config key is a flag; [the value] after each is that of {origin}."
    usage = f"{prog} [--config NAME | --resume RUN] [--name NAME] [--KEY VALUE ...]"
    p = parser(prog, about, usage=usage)
    p.allow_abbrev = False
    run = p.add_argument_group("run folder")
    for name, (metavar, help_text) in RUN_FLAGS.items():
        run.add_argument(name, metavar=metavar, help=help_text)
    groups = {}
    for key, (read, _) in KEYS.items():
        section, comment = help_texts.get(key, ("other", ""))
        group = groups.get(section) or groups.setdefault(section, p.add_argument_group(section.replace("_", " ")))
        help_text = f"{comment} [{shown(cfg[key])}]".strip().replace("%", "%%")  # argparse %-formats help
        if read is parse_bool:
            group.add_argument(flag(key), dest=key, nargs="?", const=True, type=read, metavar="BOOL", help=help_text)
        elif key in WINDOWS:
            group.add_argument(
                flag(key), dest=key, nargs="?", const=DEFAULT_WINDOW, metavar="START:STOP", help=help_text
            )
        else:
            metavar = {int: "INT", float: "FLOAT", str: "TEXT"}.get(read, "LIST")
            group.add_argument(flag(key), dest=key, type=read, metavar=metavar, help=help_text)
    return p


def resolve(argv, resumed_config=None, world=1, prog="python -m engine.train", keep_checkpointed=True):
    """(config, run flags): the chosen config with the command line applied, every value checked.

    `resumed_config(run)` gives the config.json of the run that --resume names: the run continues with
    it; keys it lacks (added to the project since) take the schema config's values. `world` is the
    number of ranks the batch is split across. --help prints every key and exits. `keep_checkpointed`:
    a resumed run keeps what its checkpoint fixes (a tool that loads no checkpoint may change it).
    """
    pre = parser(prog, None, add_help=False)
    pre.allow_abbrev = False
    for name in RUN_FLAGS:
        pre.add_argument(name)
    flags, remaining = pre.parse_known_args(argv)
    if flags.resume and flags.config:
        raise UserError("--resume continues a run with its own config; drop --config (override single keys instead)")
    if flags.resume and resumed_config:
        resumed = resumed_config(flags.resume)
        cfg, help_texts = load(SCHEMA)  # never the run's own file: it may have moved or changed since
        cfg.update({k: v for k, v in resumed.items() if k in KEYS})
        name, origin = resumed.get("config", DEFAULT), f"run {flags.resume}"
    else:
        name = flags.config or DEFAULT
        cfg, help_texts = load(name)
        origin = f"config {name}"
    full = _flag_parser(cfg, help_texts, prog, origin)
    if any(arg in ("-h", "--help") for arg in remaining):
        full.parse_args(["--help"])  # prints the help and exits 0
    overrides, unknown = full.parse_known_args(remaining)
    if unknown:
        raise UserError(_unknown_message(unknown[0], cfg))
    given = {k: v for k, v in vars(overrides).items() if v is not None and k in KEYS}
    if flags.resume and keep_checkpointed:
        _refuse_changes_a_checkpoint_fixes(cfg, given)
    cfg.update(given)
    check(cfg, world)
    cfg["config"] = name
    return cfg, flags


def _refuse_changes_a_checkpoint_fixes(cfg, given):
    for keys, remedy in (
        (NETWORK_KEYS, "the checkpoint's weights are of that network; another one is a new run (--config, --name)"),
        (OPTIMISER_KEYS, "the checkpoint restores the optimiser; to change it, start a new run from its weights: "
                         "--init-from RUN/checkpoints/last.pt"),
    ):  # fmt: skip
        changed = [key for key in keys if key in given and given[key] != cfg[key]]
        if changed:
            key = changed[0]
            raise UserError(f"{flag(key)} cannot change on --resume (the run's {key} is {shown(cfg[key])}): {remedy}")


def _unknown_message(arg, cfg):
    key = arg.split("=")[0].lstrip("-").replace("-", "_")
    close = difflib.get_close_matches(key, list(cfg), n=3)
    hint = f"; did you mean {', '.join(flag(c) for c in close)}?" if close else "; see --help for every flag"
    return f"unknown option {arg!r}{hint}"


# --- values with their own syntax ------------------------------------------------------------------


def parse_window(text, name):
    """'START:STOP' -> (start, stop) step numbers, or None for ''."""
    if not text:
        return None
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"--{name} takes START:STOP step numbers, like 10:20; got {text!r}") from None
    if not 0 <= start < stop:
        raise UserError(f"--{name} needs 0 <= START < STOP, got {text!r}")
    return start, stop


def parse_duration(text):
    """'11h50m', '90m', '30s', '2h' -> seconds (a bare number is seconds; None for '')."""
    if not text:
        return None
    cleaned = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms]?)", cleaned)
    well_formed = parts and "".join(n + u for n, u in parts) == cleaned and all(u for _, u in parts[:-1])
    if not well_formed:
        raise UserError(f"--time-limit takes a duration like 11h50m, 90m or 3600s; got {text!r}")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)
