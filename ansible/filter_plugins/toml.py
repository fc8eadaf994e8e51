"""`toml_value`: a TOML value (string, number, boolean, list, inline table) from a YAML one,
for the [control] / [agent] / [dashboard] tables the roles render."""

import json


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


class FilterModule:
    def filters(self):
        return {"toml_value": toml_value}
