"""Rewards for the online-stage tests (loaded by name "stages.easy_rewards:digit_share" in worker processes)."""


def digit_share(completions, **columns):
    """Share of a completion's characters that are digits: a dense reward a tiny policy can climb quickly."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


def vowel_share(completions, **columns):
    """Share of a completion's characters that are lowercase vowels (about 0.1–0.2 for a random tiny policy)."""
    return [sum(ch in "aeiou" for ch in text) / max(len(text), 1) for text in completions]
