"""The string tasks and the text corpus's English sentences, for data/generate.py (its docstring
describes the files; the sizes and seeds are set there)."""
from __future__ import annotations

import random


def _turn(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


def _words(text: str) -> list[str]:
    """Split a whitespace-separated word list (kept as prose so the lists stay compact)."""
    return text.split()


# Short, common, distinct lowercase words for the string tasks.
WORDS = _words(
    """
    apple bread chair cloud dance eagle field grape house juice knife lemon money night
    ocean paper queen river stone table uncle voice water youth zebra actor beach candy
    diary enemy flame ghost heart image jelly koala lunch mango novel olive piano quilt
    radio salad tiger unity video wheel yacht angle brick crane drum fence globe honey
    igloo jewel kite lamp melon nest owl pearl quiz robot sugar train umbrella vase
    wagon yarn bell cake desk egg frog goat hat ink jar key leaf map
    nut orbit pen ring sock tent van wolf box cup dog fig gum hen
    kit lid mud oak pig rug sun toy web zip bird coat door fish
    gold hill iron jam king lake milk nose park road ship tree wind corn
    dust farm gate hook leg moon nail page rain salt tail wall arrow badge
    baker berry blade blank board brush cabin camel candle carrot castle cherry circle clock
    coast cotton crown daisy dragon dream eraser fairy feather finger flute forest fruit garlic
    giant glass glove guitar hammer harbor helmet horse island jacket jungle kettle ladder lizard
    magnet marble meadow mirror monkey motor muffin needle noodle orange otter oyster panda parrot
    pepper pillow pirate planet pocket potato puppy rabbit rocket saddle sailor shadow shell silver
    spider spoon square squid stamp summer sweater ticket tomato towel tunnel turtle valley violin
    walnut window winter wizard yogurt anchor banana basket bottle button cactus carpet cookie copper
    desert dinner donkey engine falcon farmer flower folder garage hunter insect kitten lantern legend
    letter lion mask medal nickel onion
    """
)


def _sort_problem(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, 3)
    return "Sort these words alphabetically: " + " ".join(words), " ".join(sorted(words))


def _reverse_problem(word: str) -> tuple[str, str]:
    return "Reverse the letters of the word: " + word, word[::-1]


def strings_files(rng: random.Random, n: dict[str, int]) -> dict[str, list[dict]]:
    """Sort-3-words and reverse-a-word problems; held-out prompts never appear in training.

    Held-out reversal uses words that training never reverses (one prompt per held word);
    the rest of heldout.jsonl is sorting prompts that training never shows.
    """
    assert len(set(WORDS)) == len(WORDS), "WORDS has duplicates"
    words = list(WORDS)
    rng.shuffle(words)
    n_held_words = n["heldout"] // 5
    held_words, train_words = words[:n_held_words], words[n_held_words:]
    held = [_reverse_problem(w) for w in held_words]
    seen = {prompt for prompt, _ in held}
    while len(held) < n["heldout"]:
        prompt, answer = _sort_problem(rng)
        if prompt not in seen:
            seen.add(prompt)
            held.append((prompt, answer))
    rng.shuffle(held)

    def draw(count: int) -> list[tuple[str, str]]:
        out, mine = [], set()
        while len(out) < count:
            if rng.random() < 0.5:
                out.append(_reverse_problem(rng.choice(train_words)))  # few words: repeats
                continue
            prompt, answer = _sort_problem(rng)
            if prompt not in seen and prompt not in mine:
                mine.add(prompt)
                out.append((prompt, answer))
        return out

    sft, rl = draw(n["sft"]), draw(n["rl"])
    return {
        "sft": [{"messages": [_turn("user", p), _turn("assistant", a)]} for p, a in sft],
        "rl": [{"prompt": [_turn("user", p)], "answer": a} for p, a in rl],
        "heldout": [{"prompt": [_turn("user", p)], "answer": a} for p, a in held],
    }


NAMES = _words("Anna Ben Cara Dan Eva Finn Gina Hugo Ida Jack Kim Leo Mia Nora Omar Pia Sam Tom")
ADJECTIVES = _words("small big red blue green old new happy quiet warm cold long short bright")
NOUNS = _words("cat dog bird cup tree house river book car ball boat apple cake door hat")
PLACES = _words("park garden kitchen school market forest city library beach village")
TIMES = _words("morning afternoon evening night")
VERBS = _words("sees likes finds wants takes has paints draws")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def sentence(rng: random.Random) -> str:
    """One simple English sentence from a handful of templates."""
    name, name2 = rng.sample(NAMES, 2)
    adj, noun, place = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(PLACES)
    count = rng.randint(2, 9)
    templates = (
        f"The {adj} {noun} is in the {place}.",
        f"{name} {rng.choice(VERBS)} the {adj} {noun}.",
        f"{name} goes to the {place} in the {rng.choice(TIMES)}.",
        f"{name} and {name2} walk to the {place} together.",
        f"{name} has {count} {noun}s and {name2} has one {noun}.",
        f"Where is the {noun}? It is in the {place}.",
        f"The {noun} is {adj}, and the {rng.choice(NOUNS)} is {rng.choice(ADJECTIVES)}.",
        f"In the {rng.choice(TIMES)}, {name} reads a book about {_a(adj)} {noun}.",
        f"{name} asks {name2} a question, and {name2} answers it.",
        f"There are {count} {adj} {noun}s near the {place}.",
    )
    return rng.choice(templates)
