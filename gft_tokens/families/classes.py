"""Class names of a trained model: its ``dataset`` record ({name, class_names}), set by the training loop from the
shards' ``dataset.json`` (or the class folders), and ``--class NAME`` selection."""

from __future__ import annotations

from ..errors import GFTError


def model_class_names(config) -> list[str]:
    """One name per class id: the model's dataset record; for a model without one (trained before the record
    existed), the embedded shapes' names when it has their ten classes, else the ids as strings."""
    n = int(config.num_classes)
    record = getattr(config, "dataset", None) or {}
    names = record.get("class_names")
    if isinstance(names, list) and len(names) == n:
        return [str(x) for x in names]
    tokenizer = getattr(config, "tokenizer", None) or {}
    if not record and n == 10 and "shapes" in str(tokenizer.get("path", "")):
        from ..data.shapes import CLASS_NAMES

        return list(CLASS_NAMES)
    return [str(i) for i in range(n)]


def resolve_classes(wanted: list[str], names: list[str]) -> list[int]:
    """Class ids of ``wanted`` (names, or ids as text); refuses an unknown name or an id out of range."""
    out = []
    for item in wanted:
        item = str(item)
        if item in names:
            out.append(names.index(item))
        elif item.lstrip("-").isdigit():
            c = int(item)
            if not 0 <= c < len(names):
                raise GFTError(f"class id {c} is outside [0, {len(names)}) (the model has {len(names)} classes)")
            out.append(c)
        else:
            shown = ", ".join(names[:12]) + (" …" if len(names) > 12 else "")
            raise GFTError(f"unknown class {item!r}; the model's classes: {shown}")
    return out
