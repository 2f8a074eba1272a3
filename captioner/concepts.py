"""The concept table: the objects a caption can name, the words that name them, and the ImageNet-1k classes
that are evidence for them. The one place this knowledge lives: grounded decoding (`captioner.grounding`)
builds its evidence from it, and the hallucination metrics (`training.hallucination`) count with it.

A concept with ImageNet classes is grounded on the encoder's own ImageNet head (the probability summed over
those classes); one without is grounded on a detector learned from training captions (a photo shows the
concept when one of its references names it). ImageNet covers animals and vehicles well; it has no class
for a person, and a small ball or frisbee beside a dog is rarely an ImageNet photo's main subject, so those
are learned.

Words are grouped as CHAIR groups them (Rohrbach et al. 2018): a man described as "a boy" names the right
concept; a concept nobody in the references names is a hallucination. "bike" is one concept for bicycles and
motorbikes, because Flickr8k's references call a dirt bike "a bike".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .vocab import tokenize


@dataclass(frozen=True)
class Concept:
    name: str
    words: tuple[str, ...]
    imagenet: tuple[int, ...] = ()  # class indices (0-999) whose probability is the evidence; () = learned


def _classes(*spans: int | tuple[int, int]) -> tuple[int, ...]:
    """Class indices from single indices and inclusive (first, last) ranges."""
    out: list[int] = []
    for s in spans:
        out.extend(range(s[0], s[1] + 1) if isinstance(s, tuple) else [s])
    return tuple(out)


CONCEPTS: tuple[Concept, ...] = (
    Concept("person", tuple("""man men woman women boy boys girl girls child children kid kids people person baby
        babies toddler toddlers lady ladies guy guys player players crowd adult adults teenager teenagers teen teens
        biker bikers skier skiers snowboarder snowboarders surfer surfers swimmer swimmers climber climbers rider
        riders cyclist cyclists worker workers soldier dancer dancers mother father son daughter brother sister
        friends friend policeman officer skateboarder skateboarders skater skaters singer performer performers
        audience spectators family couple someone gentleman individual youngster youngsters infant toddler
        bride groom cowboy cowboys athlete athletes runner runners hiker hikers fans tourists male males female
        females artist bicyclist bicyclists bridesmaids catcher cheerleader cheerleaders clown clowns cop cowgirl
        diver drummer fan fisherman goalie guitarist human individuals jockey kayaker mom motorcyclist
        motorcyclists musicians officers opponent parent parents pedestrian pedestrians police policemen
        quarterback students team vendor wrestler wrestlers""".split())),
    Concept("dog", ("dog", "dogs", "puppy", "puppies"), _classes((151, 268))),
    Concept("cat", ("cat", "cats", "kitten", "kittens"), _classes((281, 285))),
    Concept("bird", ("bird", "birds", "duck", "ducks", "geese", "goose", "seagull", "seagulls", "pigeon", "pigeons",
                     "chicken", "chickens", "swan", "pelican", "parrot"), _classes((7, 24), (80, 100), (127, 146))),
    Concept("horse", ("horse", "horses", "pony", "ponies")),
    Concept("cow", ("cow", "cows", "bull", "bulls", "cattle", "calf"), _classes((345, 347))),
    Concept("sheep", ("sheep", "lamb", "ram"), _classes((348, 349))),
    Concept("goat", ("goat", "goats")),
    Concept("camel", ("camel", "camels"), _classes(354)),
    Concept("elephant", ("elephant", "elephants"), _classes(101, (385, 386))),
    Concept("bear", ("bear", "bears"), _classes((294, 297))),
    Concept("monkey", ("monkey", "monkeys", "ape", "gorilla"), _classes((365, 382))),
    Concept("fish", ("fish", "shark"), _classes((0, 6), (389, 397))),
    Concept("deer", ("deer",)),
    Concept("bike", ("bike", "bikes", "bicycle", "bicycles", "motorcycle", "motorcycles", "motorbike", "motorbikes",
                     "dirtbike", "scooter", "moped")),
    Concept("car", ("car", "cars", "jeep", "van", "taxi", "suv"),
            _classes(407, 436, 468, 511, 573, 609, 627, 656, 661, 717, 734, 751, 817)),
    Concept("truck", ("truck", "trucks", "tractor"), _classes(555, 569, 675, 864, 866, 867)),
    Concept("bus", ("bus", "buses"), _classes(654, 779, 874)),
    Concept("train", ("train", "trains", "locomotive"), _classes(466, 547, 565, 705, 820)),
    Concept("boat", ("boat", "boats", "canoe", "canoes", "kayak", "kayaks", "raft", "sailboat", "ship", "ships"),
            _classes(403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914)),
    Concept("airplane", ("plane", "planes", "airplane", "airplanes", "jet"), _classes(404, 895, 908)),
    Concept("helicopter", ("helicopter",)),
    Concept("ball", ("ball", "balls")),
    Concept("frisbee", ("frisbee", "frisbees")),
    Concept("kite", ("kite", "kites")),
    Concept("surfboard", ("surfboard", "surfboards")),
    Concept("skateboard", ("skateboard", "skateboards")),
    Concept("skis", ("ski", "skis", "snowboard", "snowboards", "sled", "sleds")),
    Concept("umbrella", ("umbrella", "umbrellas")),
    Concept("bag", ("bag", "bags", "backpack", "backpacks", "purse")),
    Concept("bench", ("bench", "benches")),
    Concept("chair", ("chair", "chairs")),
    Concept("couch", ("couch", "sofa")),
    Concept("bed", ("bed", "beds")),
    Concept("table", ("table", "tables")),
    Concept("guitar", ("guitar", "guitars")),
    Concept("drum", ("drum", "drums")),
    Concept("microphone", ("microphone", "microphones")),
    Concept("camera", ("camera", "cameras")),
    Concept("phone", ("phone", "phones", "cellphone")),
    Concept("book", ("book", "books")),
    Concept("bottle", ("bottle", "bottles")),
    Concept("cup", ("cup", "cups", "mug")),
    Concept("hat", ("hat", "hats", "cap", "caps")),
    Concept("helmet", ("helmet", "helmets")),
    Concept("tent", ("tent", "tents")),
    Concept("fountain", ("fountain", "fountains")),
    Concept("computer", ("laptop", "computer", "computers")),
    Concept("stroller", ("stroller", "strollers", "carriage")),
    Concept("swing", ("swing", "swings")),
    Concept("trampoline", ("trampoline",)),
    Concept("flag", ("flag", "flags")),
    Concept("toy", ("toy", "toys")),
)


def word_concepts(concepts: tuple[Concept, ...] | list[Concept] = CONCEPTS) -> dict[str, str]:
    """word -> the concept it names."""
    out: dict[str, str] = {}
    for c in concepts:
        for w in c.words:
            if out.get(w, c.name) != c.name:
                raise ValueError(f"{w!r} names both {out[w]!r} and {c.name!r}")
            out[w] = c.name
    return out


def named_concepts(words: Iterable[str], table: dict[str, str]) -> set[str]:
    """The concepts a caption's words name."""
    return {table[w] for w in words if w in table}


def shown_concepts(references: Sequence[str], table: dict[str, str]) -> set[str]:
    """The concepts a photo shows, as far as its references tell: those any of them names. The one definition
    the detectors' labels, CHAIR and SCST's charge share."""
    return named_concepts((w for ref in references for w in tokenize(ref)), table)
