"""Configs: TOML files in configs/ whose every key is a command-line flag, checked once before any work.

A config's tables ([model], [data], ...) group its keys for --help; the keys themselves are flat and
unique (`batch_size` is `--batch-size`). `base = "irn_x4"` inherits another config and overrides some
of its keys (in tables or, as older files did, at the top level). The trailing comment of each key is
its help text. `resolve()` applies the command line; `check()` validates every value with a one-line
error naming the flag, the value and what is allowed. The fields of `Config` say how each key is read from
its flag and checked.
"""

import argparse
import difflib
import importlib.resources
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine.data.codec import CODECS
from engine.errors import UserError, parser
from engine.model.dense_choice import DENSE_KERNELS
from engine.model.execution import COMPILE_MODES, DEVICE_CHOICES, DEVICES, PRECISIONS


def _config_dir():
    """Where the named configs are: inside the installed package (a wheel ships the top-level configs/ as
    engine/configs), else at the top of the source checkout that an editable install runs from."""
    packaged = Path(str(importlib.resources.files("engine") / "configs"))
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


CONFIG_DIR = _config_dir()
DEFAULT = "demo"
SCHEMA = "irn_x4"  # the config that every other is based on: it holds every key, its section and comment
# What a checkpoint fixes, so a resumed run keeps it: the network its weights have (another one is a
# new run), and the optimiser and schedule its state restores (others: a new run from its weights).
NETWORK_KEYS = ("scale", "blocks_per_stage", "growth", "clamp", "crm", "crm_features", "crm_blocks", "crm_growth")
OPTIMISER_KEYS = ("lr", "betas", "weight_decay", "lr_milestones", "lr_gamma")
WINDOWS = ("py_spy", "torch_profile", "nsys")  # step-window options: a bare flag takes DEFAULT_WINDOW
DEFAULT_WINDOW = "10:20"
RUN_FLAGS = {
    "--config": ("NAME", f"a config in configs/ by name, or a .toml path (default: {DEFAULT})"),
    "--resume": ("RUN", "continue a run folder (runs/run_N or its name) from its checkpoint, with its config"),
    "--name": ("NAME", "the new run folder's name under the runs folder (default: the next run_N)"),
    "--runs-dir": ("DIR", "where run folders go and are found by name (default: $IRNSCOPE_RUNS, else runs/)"),
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


def is_text(v, cfg):
    return None if isinstance(v, str) else 'a text (a folder path, or "")'


def is_bool(v, cfg):
    return None if isinstance(v, bool) else "true or false"


def a_scale(v, cfg):
    ok = _is_int(v) and (v == 3 or v >= 2 and v & (v - 1) == 0)
    return None if ok else "a power of two (2, 4, 8, 16, ...) or 3"


def a_crop(v, cfg):
    scale = cfg["scale"]
    ok = _is_int(v) and v % scale == 0 and v >= 2 * scale
    return None if ok else f"a multiple of the scale {scale}, at least {2 * scale}"


def a_batch(v, cfg):
    world = cfg["_world"]
    if _is_int(v) and v >= 1 and v % world == 0:
        return None
    return f"an integer >= 1 divisible by the {world} ranks" if world > 1 else "an integer >= 1"


def two_betas(v, cfg):
    ok = isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
    return None if ok else "two numbers in [0, 1), like 0.9,0.999"


def increasing_steps(v, cfg):
    ok = isinstance(v, list) and all(_is_int(m) and m >= 1 for m in v) and v == sorted(set(v))
    return None if ok else "increasing step numbers >= 1, like 100000,200000 (or empty)"


def a_quality(v, cfg):
    return None if _is_int(v) and 1 <= v <= 100 else "a codec quality from 1 to 100"


def qualities(v, cfg):
    ok = isinstance(v, list) and len(v) in (1, 2) and not any(a_quality(q, cfg) for q in v) and v == sorted(v)
    return None if ok else "a quality from 1 to 100, or LOW,HIGH (one drawn per sample), like 90 or 30,90"


def a_crm(v, cfg):
    if not isinstance(v, bool):
        return "true or false"
    if v and cfg["codec"] == "none":
        return "false without a codec: a CRM restores a compressed LR (add --codec jpeg)"
    return None


def a_device(v, cfg):
    return None if isinstance(v, str) and re.fullmatch(DEVICES, v) else DEVICE_CHOICES


def a_window(v, cfg):
    ok = isinstance(v, str) and _parses(lambda t: parse_window(t, ""), v)
    return None if ok else 'START:STOP step numbers with 1 <= START < STOP, or ""'


def a_duration(v, cfg):
    ok = isinstance(v, str) and _parses(parse_duration, v) and parse_duration(v) != 0
    return None if ok else 'a duration like 11h50m, 90m or 3600s, or "" for none'


def _parses(parse, value):
    try:
        parse(value)
        return True
    except UserError:
        return False


def flag_type(read, rule):
    """An argparse type for another command's flag, read and checked with one of the rules above, so that every
    command words a bad value as training does ("expected an integer >= 1")."""

    def parse(text):
        try:
            value = read(text)
        except (ValueError, argparse.ArgumentTypeError):
            value = text
        allowed = rule(value, {})
        if allowed:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {allowed}")
        return value

    return parse


INTEGERS = list_of(int, "comma-separated integers")
NUMBERS = list_of(float, "comma-separated numbers")


def config_key(read, rule):
    """A config key: how its flag's text is read, and the rule its value must meet (None, or what is allowed)."""
    return field(metadata={"read": read, "rule": rule})


@dataclass(frozen=True)
class Config:
    """A run's resolved config: every key of configs/*.toml (each one a flag), checked, built once by
    `resolve()`. The defaults live in the files (configs/irn_x4.toml holds every key, its section and its
    comment), not here. `replace(cfg, key=value)` makes a variant; config.json holds `cfg.to_json()`."""

    scale: int = config_key(int, a_scale)
    blocks_per_stage: int = config_key(int, integer(1))
    growth: int = config_key(int, integer(1))
    clamp: float = config_key(float, number(0, strict=True))
    invertible_backprop: bool = config_key(parse_bool, is_bool)
    data: str = config_key(str, is_text)
    val: str = config_key(str, is_text)
    data_cache: str = config_key(str, is_text)
    crop: int = config_key(int, a_crop)
    batch_size: int = config_key(int, a_batch)
    workers: int = config_key(int, integer(0))
    val_every: int = config_key(int, integer(0))
    val_max_images: int = config_key(int, integer(1))
    steps: int = config_key(int, integer(1))
    lr: float = config_key(float, number(0, strict=True))
    betas: tuple[float, float] = config_key(NUMBERS, two_betas)
    weight_decay: float = config_key(float, number(0))
    lr_milestones: tuple[int, ...] = config_key(INTEGERS, increasing_steps)
    lr_gamma: float = config_key(float, number(0, strict=True))
    grad_clip: float = config_key(float, number(0, strict=True))
    seed: int = config_key(int, integer(0))
    lambda_fit: float = config_key(float, number(0))
    lambda_ce: float = config_key(float, number(0))
    lambda_rec: float = config_key(float, number(0))
    z_scale: float = config_key(float, number(0))
    codec: str = config_key(str, choice("none", *CODECS))
    codec_quality: tuple[int, ...] = config_key(INTEGERS, qualities)
    crm: bool = config_key(parse_bool, a_crm)
    crm_features: int = config_key(int, integer(1))
    crm_blocks: int = config_key(int, integer(1))
    crm_growth: int = config_key(int, integer(1))
    lambda_restore: float = config_key(float, number(0))
    lambda_joint: float = config_key(float, number(0))
    joint_from: int = config_key(int, integer(0))
    explosion_factor: float = config_key(float, number(0))
    explosion_window: int = config_key(int, integer(1))
    max_bad_steps: int = config_key(int, integer(1))
    explosion_batches_kept: int = config_key(int, integer(0))
    device: str = config_key(str, a_device)
    precision: str = config_key(str, choice(*PRECISIONS))
    fast_kernels: bool = config_key(parse_bool, is_bool)
    dense_kernels: str = config_key(str, choice(*DENSE_KERNELS))
    compile: str = config_key(str, choice("off", *COMPILE_MODES))
    cudnn_benchmark: bool = config_key(parse_bool, is_bool)
    tf32: bool = config_key(parse_bool, is_bool)
    checkpoint_every: int = config_key(int, integer(0))
    checkpoints_kept: int = config_key(int, integer(1))
    time_limit: str = config_key(str, a_duration)
    init_from: str = config_key(str, is_text)
    py_spy: str = config_key(str, a_window)
    py_spy_native: bool = config_key(parse_bool, is_bool)
    torch_profile: str = config_key(str, a_window)
    nsys: str = config_key(str, a_window)
    nvtx: bool = config_key(parse_bool, is_bool)
    gpu_sample_ms: int = config_key(int, integer(1))
    tensorboard: bool = config_key(parse_bool, is_bool)
    wandb: bool = config_key(parse_bool, is_bool)
    config: str = DEFAULT  # the config file it came from: a name in configs/ or a .toml path

    def to_json(self):
        return asdict(self)

    @property
    def loss_weights(self):
        return {"lambda_fit": self.lambda_fit, "lambda_ce": self.lambda_ce, "lambda_rec": self.lambda_rec}


KEYS = {f.name: (f.metadata["read"], f.metadata["rule"]) for f in fields(Config) if f.metadata}


def check(cfg, world=1):
    """Every value against its rule; the first bad one is a one-line UserError."""
    missing = [k for k in KEYS if k not in cfg]
    if missing:
        raise UserError(f'the config has no {", ".join(missing[:3])}; base it on another: base = "{SCHEMA}"')
    unknown = [k for k in cfg if k not in KEYS]
    if unknown:
        raise UserError(f"unknown config key {unknown[0]!r}{_suggestion(unknown[0], KEYS)}")
    context = {**cfg, "_world": world}
    for key, (read, rule) in KEYS.items():
        if key == "crop" and a_scale(cfg["scale"], context):
            continue  # the scale's own message comes first
        allowed = rule(cfg[key], context)
        if allowed:
            quoted = isinstance(cfg[key], str) and read is not str  # a number written as "96" in a file
            raise UserError(f"{flag(key)} {repr(cfg[key]) if quoted else shown(cfg[key])}: expected {allowed}")


def shown(value):
    """A value as it is typed on the command line: lists comma-separated, true/false, the empty text as ""."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
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


def load(name_or_path, chain=(), sources=None):
    """(config, {key: (section, help text)}) of a config file and its `base` chain (`chain`: the files that
    named this one as their base, which it must not name again); `sources`, if given, gets the file each
    key's value came from."""
    path = config_path(name_or_path)
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path} is not valid TOML ({err})") from None
    base = base_of(path, tables.pop("base", None), chain)
    cfg, help_texts = load(base, (*chain, path.resolve()), sources) if base else ({}, {})
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
        if sources is not None:
            sources[key] = path.name
        base_section, base_text = help_texts.get(key, (section, ""))
        help_texts[key] = (base_section, comments.get(key) or base_text)
    return cfg, help_texts


def base_of(path, base, chain):
    """The `base` a config file names (None without one); one that is not a name, or that leads back to a
    file of `chain` or to the file itself, is one line."""
    if base is not None and not (isinstance(base, str) and base):
        raise UserError(f'{path}: base = {base!r}: expected the name or path of a config, like base = "{SCHEMA}"')
    if base and config_path(base).resolve() in {*chain, path.resolve()}:
        names = " -> ".join(str(p) for p in (*chain, path.resolve(), config_path(base).resolve()))
        raise UserError(f"{path}: its base chain comes back to itself ({names}); base it on {SCHEMA}")
    return base


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
    """(Config, run flags): the chosen config with the command line applied, every value checked. The flags'
    `sources` say where each key's value came from: a config file, the run resumed, or the command line.

    `resumed_config(run, runs_dir)` gives the config.json of the run that --resume names (under --runs-dir):
    the run continues with it; keys it lacks (added to the project since) take the schema config's values.
    `world` is the number of ranks the batch is split across. --help prints every key and exits. `keep_checkpointed`:
    a resumed run keeps what its checkpoint fixes (a tool that loads no checkpoint may change it).
    """
    flags, remaining = _run_flags(argv, prog)
    flags.sources = {}
    if flags.resume and resumed_config:
        values, help_texts = _resumed(resumed_config(flags.resume, flags.runs_dir)), load(SCHEMA)[1]
        name, origin = values.pop("config", DEFAULT), f"run {flags.resume}"
        flags.sources = dict.fromkeys(values, f"run {flags.resume}")
    else:
        name = flags.config or DEFAULT
        (values, help_texts), origin = load(name, sources=flags.sources), f"config {name}"
    given = _flag_values(remaining, values, help_texts, prog, origin)
    if flags.resume and keep_checkpointed:
        _refuse_changes_a_checkpoint_fixes(values, given)
    values.update(given)
    flags.sources |= dict.fromkeys(given, "command line")
    check(values, world)
    return built(values, name), flags


def _run_flags(argv, prog):
    """(--config, --resume and --name, the rest of the command line)."""
    pre = parser(prog, None, add_help=False)
    pre.allow_abbrev = False
    for name in RUN_FLAGS:
        pre.add_argument(name)
    flags, remaining = pre.parse_known_args(argv)
    if flags.resume and flags.config:
        raise UserError("--resume continues a run with its own config; drop --config (override single keys instead)")
    return flags, remaining


def _resumed(record):
    """A run's config.json as values: the schema's for keys it lacks (added to the project since); never the
    run's own file, which may have moved or changed since."""
    return load(SCHEMA)[0] | {k: v for k, v in record.items() if k in KEYS or k == "config"}


def from_record(record):
    """The Config of a run's config.json (keys it lacks take the schema's values), checked."""
    values = _resumed(record)
    name = values.pop("config", DEFAULT)
    check(values)
    return built(values, name)


PATH_KEYS = ("data", "val", "init_from", "data_cache")  # folders and files: absolute, so a run resumes from anywhere
NOT_A_PATH = ("", "off")  # none given, or --data-cache off


def built(values, name):
    """The Config of checked values: lists become tuples (the record is frozen all the way down), paths absolute."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    values |= {k: str(Path(values[k]).expanduser().absolute()) for k in PATH_KEYS if values[k] not in NOT_A_PATH}
    return Config(**values, config=name)


def _flag_values(argv, values, help_texts, prog, origin):
    """{key: value} of the keys the command line sets; --help prints every key and exits."""
    full = _flag_parser(values, help_texts, prog, origin)
    if any(arg in ("-h", "--help") for arg in argv):
        full.parse_args(["--help"])  # prints the help and exits 0
    overrides, unknown = full.parse_known_args(argv)
    if unknown:
        raise UserError(_unknown_message(unknown[0], values))
    return {k: v for k, v in vars(overrides).items() if v is not None and k in KEYS}


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
    """'START:STOP' -> (start, stop): steps START to STOP-1 (numbered from 1), or None for ''."""
    if not text:
        return None
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"--{name} takes START:STOP step numbers, like 10:20; got {text!r}") from None
    if not 1 <= start < stop:
        raise UserError(f"--{name} needs 1 <= START < STOP (steps count from 1), got {text!r}")
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
