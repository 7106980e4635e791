"""Reading the JSON records jglow writes (`model.json`, `ensemble.json`, `run.json`): each is
parsed and checked key by key, so a damaged or hand-edited file is an `InputError` naming the
file, the key, the value and what was expected.

A kind is `(description, test)`: what a value must be, and the predicate that says whether it is.
"""

import dataclasses
import json
import pathlib

from jglow.errors import InputError


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


BOOL = ("true or false", lambda value: isinstance(value, bool))
INT = ("an integer", _is_int)
NUMBER = ("a number", _is_number)
TEXT = ("a string", lambda value: isinstance(value, str))
OBJECT = ("an object", lambda value: isinstance(value, dict))
INT_OR_NULL = ("an integer or null", lambda value: value is None or _is_int(value))
INTS = ("a list of integers",
        lambda value: isinstance(value, list) and all(map(_is_int, value)))
TEXTS = ("a non-empty list of strings",
         lambda value: isinstance(value, list) and bool(value)
         and all(isinstance(item, str) for item in value))
PAIRS = ("a list of [low, high] number pairs",
         lambda value: isinstance(value, list) and all(
             isinstance(pair, list) and len(pair) == 2 and all(map(_is_number, pair))
             for pair in value))


def read_json(path) -> dict:
    """The JSON object in the file `path`; `InputError` when it is not valid JSON or not an
    object, `FileNotFoundError` when absent."""
    path = pathlib.Path(path)
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error}); expected the JSON record jglow "
                         f"wrote there") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: holds a JSON {type(record).__name__}; expected a JSON object")
    return record


def kinds_of(cls) -> dict:
    """`{field: kind}` of a dataclass whose fields all have defaults of the types a JSON record
    holds (bool, int, float, str, a tuple of ints, None for an optional int); fields without a
    default are left out."""
    by_type = {bool: BOOL, int: INT, float: NUMBER, str: TEXT, tuple: INTS,
               type(None): INT_OR_NULL}
    return {f.name: by_type[type(f.default)] for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def check_keys(record: dict, kinds: dict, source: str) -> None:
    """`record` must hold exactly the keys of `kinds`, each value of its kind; raises
    `InputError` naming `source` and the first missing, unknown or ill-typed key."""
    expected = f"expected the keys {', '.join(kinds)}"
    for name in kinds:
        if name not in record:
            raise InputError(f"{source}: missing key {name!r}; {expected}")
    for name in record:
        if name not in kinds:
            raise InputError(f"{source}: unknown key {name!r}; {expected}")
    for name, (description, test) in kinds.items():
        if not test(record[name]):
            raise InputError(f"{source}: {name} is {json.dumps(record[name])}; expected "
                             f"{description}")


def construct(make, source: str, *args, **kwargs):
    """`make(*args, **kwargs)`, where the `ValueError` of a value `make` refuses (e.g. a
    `GlowConfig` whose sides are not divisible by `2**levels`) becomes an `InputError` naming
    `source`."""
    try:
        return make(*args, **kwargs)
    except ValueError as error:
        raise InputError(f"{source}: {error}") from None
