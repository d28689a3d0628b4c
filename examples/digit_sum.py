"""Find a number whose digits sum to a target: a complete MiGrATe task (run it as shown in the README).

    python migrate.py --task examples/digit_sum.py --target 40
"""
import re

from tasks import Preset, Prompt, Task, TaskDefaults, register

PREFIX = "Number: "
PRESETS = {  # strategy:  alpha beta gamma topk mu: on-policy, greedy and neighbourhood members, parents' top-k
    "random":       Preset(8, 0, 0, 3, 1),
    "ns":           Preset(0, 0, 8, 3, 1),
    "opro":         Preset(0, 0, 8, 3, 1),
    "grpo":         Preset(8, 0, 0, 3, 1),
    "grpo-greedy":  Preset(7, 1, 0, 3, 1),
    "migrate":      Preset(5, 1, 2, 3, 1),
    "migrate-opro": Preset(5, 1, 2, 3, 1),
    "migrate-evo":  Preset(5, 1, 2, 3, 1),
}


@register
class DigitSum(Task):
    name = "digitsum"
    default_target = "40"
    defaults = TaskDefaults(PRESETS, iterations=20, lr=1e-4, lora_r=8, lora_alpha=16, max_new_tokens=12)

    def __init__(self, target: str, **options):
        if not target.isdigit() or int(target) == 0:
            raise ValueError(f"digitsum target must be a positive whole number, got {target!r}")
        self.target = int(target)

    def prompt(self):
        return Prompt([{"role": "user", "content": "Write a random 6-digit number such as 529301."}], PREFIX)

    def neighbourhood_prompt(self, parent):
        return Prompt([{"role": "user", "content": f"Change one digit of the number {parent}."}], PREFIX)

    def opro_prompt(self, ranked):
        shown = ", ".join(c for c, _ in ranked)
        return Prompt([{"role": "user", "content": f"These numbers get better left to right: {shown}. Write a better one."}], PREFIX)

    def parse(self, text):
        match = re.search(r"\d{1,12}", text.removeprefix(PREFIX))
        return [str(int(match.group()))] if match else []

    def render(self, candidate):
        return PREFIX + candidate

    def score(self, candidates):
        # 1.0 when the digits sum to the target, falling linearly to 0 at a distance of `target`
        return [max(0.0, 1 - abs(sum(map(int, c)) - self.target) / self.target) for c in candidates]
