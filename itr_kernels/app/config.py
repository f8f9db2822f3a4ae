"""Training configuration: `configs/default.yaml` holds every key and its default (the one
definition); a config file names only what it changes; `key=value` overrides on the command line
change any value (dotted keys reach into `loss_args`). Unknown keys are errors, with a suggestion,
so a typo never passes silently. Files are read with yaml.safe_load."""
import difflib
import os

from . import require

require("yaml")
import yaml  # noqa: E402


def _config_dir():
    """The repository's configs/ in a source checkout; in an installed wheel, the same files
    packaged as itr_kernels/app/configs (setup.py maps that package onto configs/)."""
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.join(os.path.dirname(os.path.dirname(here)), "configs")
    return checkout if os.path.isfile(os.path.join(checkout, "default.yaml")) else os.path.join(here, "configs")


CONFIG_DIR = _config_dir()
DEFAULT_PATH = os.path.join(CONFIG_DIR, "default.yaml")
# Keys that may differ between a checkpoint and the run that resumes it: they change where and
# how a run reports, never what it computes.
RUNTIME_KEYS = ("out_dir", "progress", "device", "num_threads", "tensorboard")


class ConfigError(ValueError):
    pass


def _read(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _unknown(key, known, where):
    hint = difflib.get_close_matches(key, known, n=1)
    return ConfigError(f"{where}: unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                       + f"; known keys: {', '.join(sorted(known))}")


def _typed(key, value, default, where):
    """Values keep the type of their default (an int may stand for a float); None defaults take any."""
    if default is None or value is None or isinstance(default, dict):
        return value
    if isinstance(default, bool) != isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")
    if isinstance(default, float) and isinstance(value, str):
        try:   # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if not isinstance(value, type(default)):
        raise ConfigError(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")
    return value


def merge(base, updates, where):
    out = dict(base)
    for key, value in updates.items():
        if key not in base:
            raise _unknown(key, base, where)
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
            out[key] = {**base[key], **value}
        else:
            out[key] = _typed(key, value, base[key], where)
    return out


def parse_overrides(items):
    """['lr=1e-3', 'loss_args.weight=0.3'] -> {'lr': 0.001, 'loss_args': {'weight': 0.3}}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        if "." in key:
            head, sub = key.split(".", 1)
            out.setdefault(head, {})[sub] = value
        else:
            out[key] = value
    return out


def load_config(path=None, overrides=(), defaults=DEFAULT_PATH):
    """`defaults` (every key), then the file at `path`, then `key=value` overrides."""
    cfg = _read(defaults)
    if path and os.path.abspath(path) != os.path.abspath(defaults):
        cfg = merge(cfg, _read(path), path)
    cfg = merge(cfg, parse_overrides(overrides), "command line")
    return cfg


def differences(a, b):
    """Keys whose values differ between two configs, runtime keys aside."""
    keys = (set(a) | set(b)) - set(RUNTIME_KEYS)
    return sorted(k for k in keys if a.get(k) != b.get(k))
