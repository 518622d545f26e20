"""What every mgjax command line shares: quiet third-party logging, and user errors
reported as one message instead of a traceback.

A main defines its own flags, then hands its absl main function to `run`:

    def main():
      flags.DEFINE_string("workdir", None, "...")

      def run_fn(argv):
        ...

      cli.run(run_fn, "mgjax.train")  # instead of app.run(run_fn)

`run` defines the shared flags (`define_flags`):

  --verbose_logging  every library's INFO lines (Orbax, Grain, JAX, ...); by default
                     only mgjax's own lines are shown below WARNING.
  --traceback        a user error (`user_error_types()`: bad config, data or files, a
                     missing run, a non-finite loss) raises as usual, with its
                     traceback, instead of printing "<program>: <message>" and
                     exiting with status 2.

A bad flag or --config override is reported the same way (`brief_flags_parser`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import sysconfig
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

# Exit status of a command stopped by an error its user caused.
USER_ERROR_EXIT_CODE = 2

# Errors a user causes (bad config, bad data, a missing run or file, a non-finite
# loss): reported without a traceback. `user_error_types` adds the mgjax classes that
# are not subclasses of these (imported lazily: they pull in the media stack).
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)

# Python loggers of libraries that log through `logging.getLogger(...)`; their records
# below WARNING are dropped at the source unless --verbose_logging. Orbax, Grain and
# Flax log through absl instead, which `_OnlyOurInfo` filters by source file.
THIRD_PARTY_LOGGERS = (
    "jax",
    "jaxlib",
    "orbax",
    "grain",
    "flax",
    "etils",
    "tensorstore",
    "PIL",
    "fsspec",
    "urllib3",
    "filelock",
    "asyncio",
    "matplotlib",
    "h5py",
    "numexpr",
    "transformers",
    "huggingface_hub",
)

_MGJAX_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _installed_dirs() -> tuple[str, ...]:
  """Folders of installed code (the standard library and site-packages)."""
  paths = sysconfig.get_paths()
  dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
  dirs.update(p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages"))
  return tuple(sorted(os.path.abspath(d) + os.sep for d in dirs if d))


@functools.lru_cache(maxsize=4096)
def is_our_source(pathname: str) -> bool:
  """True for mgjax's files and any other code not installed as a library (a user's
  script, a test, a notebook cell); False for the standard library and site-packages."""
  path = os.path.abspath(pathname)
  if path.startswith(_MGJAX_DIR + os.sep):
    return True
  return not path.startswith(_installed_dirs())


class _OnlyOurInfo(logging.Filter):
  """Passes WARNING and above from anywhere, lower levels only from our own code."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or is_our_source(record.pathname)


_FILTER = _OnlyOurInfo()
_saved_levels: dict[str, int] = {}


def _filtered() -> list[logging.Filterer]:
  """The absl logger (every absl.logging call, ours and Orbax's alike) and the absl
  handler (records of Python loggers that reach the console through the root)."""
  targets: list[logging.Filterer] = [absl_logging.get_absl_logger()]
  handler = absl_logging.get_absl_handler()
  if handler is not None:
    targets.append(handler)
  return targets


def setup_logging(verbose: bool) -> None:
  """Console logging for a command: mgjax's INFO lines and everyone's warnings; with
  `verbose`, every library's INFO lines too. Idempotent; tqdm bars write to stderr
  directly and are left as they are."""
  for target in _filtered():
    target.removeFilter(_FILTER)
  for name, level in _saved_levels.items():
    logging.getLogger(name).setLevel(level)
  _saved_levels.clear()
  if not verbose:
    for target in _filtered():
      target.addFilter(_FILTER)
    for name in THIRD_PARTY_LOGGERS:
      logger = logging.getLogger(name)
      _saved_levels[name] = logger.level
      if logger.level < logging.WARNING:
        logger.setLevel(logging.WARNING)
  # Our INFO lines readable even outside `app.run` (which sets INFO itself), unless
  # the user chose a verbosity on the command line.
  absl_logger = absl_logging.get_absl_logger()
  chosen = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
  if not chosen and absl_logger.getEffectiveLevel() > logging.INFO:
    absl_logger.setLevel(logging.INFO)


def define_flags() -> None:
  """Defines --traceback and --verbose_logging (once; safe to call again)."""
  if "traceback" not in flags.FLAGS:
    flags.DEFINE_bool(
        "traceback",
        False,
        "On an error caused by the input (config, data, files), raise it with its "
        "Python traceback instead of printing its message alone.",
    )
  if "verbose_logging" not in flags.FLAGS:
    flags.DEFINE_bool(
        "verbose_logging",
        False,
        "Show the INFO lines of every library (Orbax, Grain, JAX, ...), not only mgjax's.",
    )


def user_error_types() -> tuple[type[BaseException], ...]:
  """USER_ERRORS plus the mgjax errors about unusable input data."""
  from mgjax.data.pipeline import DataQualityError  # too much unusable data
  from mgjax.data.video import MediaDecodeError  # an unreadable media file

  return USER_ERRORS + (MediaDecodeError, DataQualityError)


def format_error(program: str, error: BaseException) -> str:
  """The report of a user error: one block, "<program>: <message>", the further lines
  of a long message indented, and how to see the traceback."""
  message = str(error).strip() or type(error).__name__
  lines = message.splitlines()
  body = "\n".join([f"{program}: {lines[0]}"] + [f"  {line}" for line in lines[1:]])
  return f"{body}\n(run with --traceback for the Python traceback)\n"


def wrap(main_fn: Callable[[list[str]], Any], program: str) -> Callable[[list[str]], Any]:
  """`main_fn` with logging set up from the flags and user errors reported briefly.

  The flags must be defined (`define_flags`) before absl parses the command line.
  """

  def wrapped(argv):
    setup_logging(flags.FLAGS.verbose_logging)
    try:
      return main_fn(argv)
    except Exception as error:
      if flags.FLAGS.traceback or not isinstance(error, user_error_types()):
        raise
      sys.stdout.flush()
      sys.stderr.write(format_error(program, error))
      sys.stderr.flush()
      sys.exit(USER_ERROR_EXIT_CODE)

  return wrapped


def run(
    main_fn: Callable[[list[str]], Any],
    program: str | None = None,
    flags_parser: Callable[[list[str]], Sequence[str]] | None = None,
) -> None:
  """`app.run(main_fn)` with the shared flags, quiet logging and brief user errors.

  Args:
    main_fn: the absl main, called with the remaining argv.
    program: the name errors are prefixed with, e.g. "mgjax.train"; default the
      script's file name.
    flags_parser: as for `app.run`; default `brief_flags_parser(program)`.
  """
  define_flags()
  program = program or os.path.basename(sys.argv[0])
  app.run(wrap(main_fn, program), flags_parser=flags_parser or brief_flags_parser(program))


def brief_flags_parser(program: str) -> Callable[[list[str]], list[str]]:
  """absl's flag parsing, reporting a bad flag or --config (override) in one message
  with exit status 2; the traceback only with --traceback."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
      if "--traceback" in argv:
        raise
      message = " ".join(str(error).replace("\\n", " ").replace("\\", "").split())
      if isinstance(error, (AttributeError, KeyError)):  # an override of no config field
        message = f"the config has no field {message.strip(chr(34))}"
      sys.stderr.write(
          f"{program}: invalid command line: {message}\n"
          "(--helpfull lists the flags; a config file lists its fields)\n"
      )
      sys.exit(USER_ERROR_EXIT_CODE)

  return parse
