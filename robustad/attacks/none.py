"""``none``: the clean reference row (returns the inputs unchanged)."""

from robustad.attacks.base import Attack
from robustad.registry import register_attack


@register_attack("none", description="clean scores, the reference row")
class NoAttack(Attack):
    white_box = False

    def _run(self, detector, score_fn, x, y, threat, best, generator) -> None:
        return None
