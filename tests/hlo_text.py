"""Reading XLA's compiled HLO text in tests."""

import re


def carried_copies(hlo_text: str) -> list[tuple[int, ...]]:
    """Shapes of the float32 arrays that compiled code copies out of a loop's carried state
    (top-level `copy` of a `get-tuple-element`, outside fusion bodies)."""
    fusion_bodies = set(re.findall(r"calls=(%[\w.\-]+)", hlo_text))
    shapes, computation = [], None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            computation = head.group(1)
        elif computation not in fusion_bodies:
            m = re.search(r"= f32\[([\d,]+)\]\S* copy\(%get-tuple-element", line)
            if m:
                shapes.append(tuple(int(d) for d in m.group(1).split(",")))
    return shapes
