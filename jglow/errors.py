"""The error jglow raises for inputs it cannot use."""


class InputError(ValueError):
    """Maps, parameters or saved files that cannot be used as given: a pixel that is not
    positive and finite, maps of the wrong shape, a map count that does not match the parameter
    table, a malformed parameter file, a model directory of another format or torn by a crash.

    The message names the source, the bad value and what was expected. It is a `ValueError`;
    the commands (`jglow.train.cli`) report it as one `error: ...` line, exit status 2.
    """
