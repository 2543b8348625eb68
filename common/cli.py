"""Every script's command line: a settings dataclass becomes its flags (help and allowed values from each field's
metadata), and an expected error (a bad file, line, field or value) ends the run with one "error: ..." line.

    if __name__ == "__main__":
        cli.run(main, Args, __doc__)          # VILPRM_DEBUG=1 shows the traceback instead
"""
import argparse
import dataclasses
import math
import os
import re
import sys


def within(kind, low=None, high=None):
    """An argparse type: a number of `kind`, finite, and within [low, high] (None: no bound on that side)."""
    words = " and ".join(w for w in (f"at least {low}" if low is not None else "",
                                     f"at most {high}" if high is not None else "") if w)

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text}: expected a finite number{', ' + words if words else ''}")
        return value
    return parse


def listed(kind, low=None, high=None):
    """An argparse type: comma-separated numbers ("1,2,4"), each as within(kind, low, high) reads it; the text
    is kept as given (the script splits it)."""
    one = within(kind, low, high)

    def parse(text):
        for part in text.split(","):
            try:
                one(part.strip())
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"{text}: {e}") from None
        return text
    return parse


def device(text):
    """An argparse type: a torch device this code runs on, cpu | cuda | cuda:N ("": the default)."""
    if text and not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N")
    return text


def parse_args(cls, argv=None, doc=None):
    """argparse from a settings dataclass: one --flag per field, its help (and `choices`, a numeric `range`
    (low, high), or an argparse `type` such as listed() or device) from the field's metadata."""
    # allow_abbrev=False: "--max-step" is an error, not a silent "--max-steps"
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    for f in dataclasses.fields(cls):
        flag, helptext = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if f.type in (bool, "bool"):
            # BooleanOptionalAction states the default itself
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=helptext)
            continue
        if f.type in ("list", list):
            kw = {"nargs": "+"}
        else:
            kw = {"type": str if f.default is None else type(f.default)}
        if "range" in f.metadata:  # (low, high): a number outside it is refused when parsed
            kw["type"] = within(type(f.default), *f.metadata["range"])
        if "type" in f.metadata:
            kw["type"] = f.metadata["type"]
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if "(default" not in helptext and f.default not in ("", None):  # nothing to say of an empty default
            helptext = f"{helptext} (default: {f.default})"
        ap.add_argument(flag, default=f.default, help=helptext, **kw)
    return cls(**vars(ap.parse_args(argv)))


def choice(value, allowed, name):
    """`value` if it is one of `allowed`, else a ValueError naming the setting and what it can be."""
    if value not in allowed:
        raise ValueError(f"{name} {value!r}: expected one of {', '.join(map(str, allowed))}")
    return value


# What a user can cause: a bad file or record (data.RecordError is a ValueError), a missing path, a full disk.
EXPECTED = (ValueError, OSError)


def run(main, cls=None, doc=None, argv=None):
    """main(settings parsed from argv); an expected error prints "error: MESSAGE" on stderr and exits 2."""
    try:
        return main(parse_args(cls, argv, doc) if cls else argv)
    except BrokenPipeError:  # `python bon.py ... | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except EXPECTED as e:
        if os.environ.get("VILPRM_DEBUG"):
            raise
        print(f"error: {e or type(e).__name__} (VILPRM_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(2)
