"""How comma-separated flag values are read: lists, counts with k/M suffixes, seed ranges.

Every command reads `--bank-sizes 1k,10k`, `--seeds 0-9` or `--recall-at 1,5,10` here, so each
spelling means the same thing everywhere. Values keep the order given, without repeats; a
caller that needs them sorted sorts them.
"""

from __future__ import annotations

from ucl_cli.errors import UsageError

SUFFIXES = {"k": 1_000, "m": 1_000_000}


def parse_list(text: str) -> tuple[str, ...]:
    """'lse, topk' -> ('lse', 'topk')."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def parse_count(text: str) -> int:
    """'100', '1k', '1.5k', '2M' -> a whole number; ValueError when it is not one."""
    part = text.strip()
    scale = SUFFIXES.get(part[-1:].lower(), 1)
    digits = part[:-1] if scale > 1 else part
    value = float(digits) * scale
    if value != int(value) or value < 0:
        raise ValueError(text)
    return int(value)


def parse_sizes(text: str, *, what: str = "bank sizes") -> tuple[int, ...]:
    """'100,1k,10000' -> (100, 1000, 10000): counts with optional k/M suffixes, in the order
    given, without repeats."""
    sizes = []
    for part in parse_list(text):
        try:
            sizes.append(parse_count(part))
        except ValueError:
            raise UsageError(
                f"cannot read {what} {text!r}: {part!r} is not a count; write e.g. 100,1k,10k"
            ) from None
    if not sizes:
        raise UsageError(f"cannot read {what} {text!r}: none given; write e.g. 100,1k,10k")
    return tuple(dict.fromkeys(sizes))


def parse_ints(text: str, *, flag: str) -> tuple[int, ...]:
    """'1,5,10' -> (1, 5, 10), in the order given, without repeats."""
    try:
        return tuple(dict.fromkeys(int(part) for part in parse_list(text)))
    except ValueError:
        raise UsageError(f"{flag} takes whole numbers, e.g. 1,5,10; got {text!r}") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0-9', '3', or '0,2,5-7' -> seeds in the order given, without repeats."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                low, high = part.split("-", 1)
                if int(high) < int(low):
                    raise ValueError
                seeds.extend(range(int(low), int(high) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(
            f"cannot read seeds {text!r}; write a range like 0-9, a list like 0,3,7, or both"
        ) from None
    return tuple(dict.fromkeys(seeds))
