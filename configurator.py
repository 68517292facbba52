"""Settings from the command line: config files and --key=value overrides, checked against defaults.

    python train.py config/stories260K.py --learning_rate=3e-4 --compile=False

Arguments apply left to right, so a later one wins. A config file is a Python file of plain
assignments (`batch_size = 128`); it runs in a namespace of its own and only the names it assigns
that are known settings are taken: it cannot reach the script's other globals, and an assigned name
that is not a setting is an error, like a misspelt flag (names starting with `_`, imports, functions
and classes are the file's own business and are ignored). Every value is checked against the type of
the setting's default: an int is fine where a float is expected, a float with an integral value is
fine where an int is, booleans are True/False (also true/false/1/0), strings are taken as typed.
Settings whose default is None declare their type in `none_types` and also accept None.

Any mistake is a ConfigError whose message names the argument and, for unknown names, the closest
known ones; `configure_or_exit` prints it on one line and exits with status 2.
"""
import argparse
import ast
import difflib
import os
import re
import sys
import types


class ConfigError(ValueError):
    pass


def closest(name, known):
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; closest: {', '.join('--' + k for k in close)}" if close else f"; known: {', '.join(sorted(known))}"


def convert(key, value, default, none_types, where):
    """The value for setting `key` (a string from the command line, or an object from a config file)."""
    want = none_types.get(key) if default is None else type(default)
    if want is None:  # an untyped None default: any Python literal, else the text itself
        try:
            return ast.literal_eval(value) if isinstance(value, str) else value
        except (ValueError, SyntaxError):
            return value
    if isinstance(value, str) and want is not str:
        text = value.strip()
        if text == "None" and key in none_types:
            return None
        if want is bool:
            if text.lower() in ("true", "1"):
                return True
            if text.lower() in ("false", "0"):
                return False
            raise ConfigError(f"{where}: {key} expects True or False, got {value!r}")
        try:
            value = ast.literal_eval(text.replace("_", "") if want in (int, float) else text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{where}: {key} expects {want.__name__}, got {value!r}") from None
    if value is None and key in none_types:
        return None
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]  # --device="'cpu'" style double quoting
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value) is not want:
        raise ConfigError(f"{where}: {key} expects {want.__name__}, got {value!r}")
    return value


def load_config_file(path):
    """The settings a config file assigns, as a dict."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found (arguments are config files or --key=value)")
    namespace = {"__file__": path, "__name__": "config"}
    try:
        with open(path) as f:
            exec(compile(f.read(), path, "exec"), namespace)
    except Exception as e:  # a broken config file is a user error, reported in one line
        raise ConfigError(f"config file {path}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def configure(defaults, argv, none_types=None):
    """Apply config files and --key=value arguments in argv to a copy of defaults and return it."""
    none_types = none_types or {}
    config = dict(defaults)
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if key not in config:
                raise ConfigError(f"unknown option --{key}{closest(key, list(config))}")
            if not eq:
                if type(defaults[key]) is not bool:
                    raise ConfigError(f"option --{key} needs a value: --{key}=VALUE")
                value = "True"  # a bare --flag switches a boolean on
            config[key] = convert(key, value, defaults[key], none_types, f"--{key}")
        else:
            for key, value in load_config_file(arg).items():
                if key not in config:
                    raise ConfigError(f"config file {arg}: unknown setting {key!r}{closest(key, list(config))}")
                config[key] = convert(key, value, defaults[key], none_types, f"config file {arg}")
    return config


def setting_notes(path, names):
    """{setting: what it does} from the comment after each `name = value` (or `name=value,`) line of
    the script at path, where the settings are declared: the help text lives beside the default."""
    notes = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*(\w+)\s*=[^#]*#\s*(.+)$", line)
            if m and m.group(1) in names and m.group(1) not in notes:
                notes[m.group(1)] = m.group(2).strip()
    return notes


def usage(defaults, prog, notes=None):
    notes = notes or {}
    lines = [f"usage: python {prog} [config/FILE.py ...] [--key=value ...]", "settings (default), and what they do:"]
    flags = {k: f"  --{k}={v!r}" for k, v in defaults.items()}
    width = min(max(map(len, flags.values())), 40)
    lines += [f"{flag:<{width}}  {notes[k]}".rstrip() if k in notes else flag for k, flag in flags.items()]
    return "\n".join(lines)


def configure_or_exit(defaults, argv=None, none_types=None, prog=None, script=None):
    """configure(), printing a one-line error and exiting with status 2 on a mistake; -h lists the
    settings, with the comments beside their defaults in script (the caller's file) as their help."""
    argv = sys.argv[1:] if argv is None else argv
    prog = prog or os.path.basename(sys.argv[0])
    if any(a in ("-h", "--help") for a in argv):
        print(usage(defaults, prog, setting_notes(script, defaults) if script else None))
        sys.exit(0)
    try:
        return configure(defaults, argv, none_types)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


def one_line_errors(parser):
    """Make an argparse parser, and its subcommands' parsers, report a mistake in one line (naming the
    closest flag to a misspelt one) and exit with status 2, instead of printing the usage first."""
    commands = {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                for name, p in a.choices.items()}
    subparsers = list(commands.values())
    flags = {o[2:] for p in [parser, *subparsers] for a in p._actions for o in a.option_strings if o.startswith("--")}

    def error(msg):
        unknown = [w.split("=")[0][2:] for w in msg.split() if w.startswith("--")] if "unrecognized" in msg else []
        hint = closest(unknown[0], sorted(flags)) if unknown else ""
        if subparsers and "required" in msg:
            hint = f" (one of: {', '.join(commands)})"
        print(f"{parser.prog}: error: {msg}{hint}", file=sys.stderr)
        sys.exit(2)
    parser.error = error
    for p in subparsers:
        one_line_errors(p)
    return parser
