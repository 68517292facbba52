"""
instruct.py: TinyStoriesInstruct's record format, the prompts built from it, and the measure of how
well a model follows them. The one place that knows the format: pretokenize, sample.py, run.c (which
restates prompt_text), the benchmark and the tests all go through it.

A record, as published (roneneldan/TinyStoriesInstruct, TinyStories-Instruct-{train,valid}.txt):

    Summary: Lily finds a lost cat and brings it home.
    Words: find, cat, warm
    Features: Dialogue, BadEnding
    Random sentence: The cat was cold.
    Story: 

    Once upon a time, ...
    <|endoftext|>

Each field (Summary, Words, Features, Random sentence) is optional and they come in any order; the
story follows "Story:" (a space, a blank line, then its lines); records are separated by a line
"<|endoftext|>". Some published records put a field after the story instead; such a field is read
and moved before it (the record then asks for what it describes). Anything else is a bad record,
named by file and line with its reason, counted by the callers, never silently dropped.

For training, a record is BOS, the tokens of its prompt (its fields, then "Story:"), the tokens of
its story, EOS; the loss is on the story and EOS only. A prompt asks for a story in the same way:

    prompt_text(words="dog, run, happy", features="Dialogue")  # "Words: ...\nFeatures: ...\nStory:"
"""
import hashlib
import random
import re
from collections import namedtuple

SEP = "<|endoftext|>"  # ends every record
FIELDS = ("Words", "Features", "Summary", "Random sentence")  # the order prompts built here use
STORY = "Story:"
_LINE = re.compile(r"(Words|Features|Summary|Random sentence|Story):(.*)")  # a field's line

# One record of a file: fields {name: text} in the record's order (any field after the story last),
# the story text, the line the record starts on (a bad one: the line its problem is on), and what is
# wrong with it ("" when nothing is).
Record = namedtuple("Record", "fields story line problem")


# -----------------------------------------------------------------------------
# the text of prompts and records

def prompt_of(fields):
    """The prompt of a record with these fields ({name: text}, in their order): a line "Name: text"
    each, then "Story:". ValueError for a field name that is not one of FIELDS, or a text that is
    empty or holds a line break (either would make a record of another shape)."""
    lines = []
    for name, text in fields.items():
        if name not in FIELDS:
            raise ValueError(f"{name!r} is not a field of an instruct record ({', '.join(FIELDS)})")
        if not text or "\n" in text or "\r" in text:
            raise ValueError(f"{name}: {text!r}: a field is one line of text, not empty")
        lines.append(f"{name}: {text}\n")
    return "".join(lines) + STORY


def prompt_text(words=None, features=None, summary=None, sentence=None):
    """The prompt asking for a story with these fields, in FIELDS order; a list of words or features
    is joined with ", " (published records write them so), a string is taken as it is; None or ""
    leaves the field out."""
    given = zip(FIELDS, (words, features, summary, sentence))
    return prompt_of({name: v if isinstance(v, str) else ", ".join(v) for name, v in given if v})


def record_text(fields, story):
    """One record as the published files hold it, its separator line included: files are these
    records one after the other."""
    return f"{prompt_of(fields)} \n\n{story.strip()}\n{SEP}\n"


def split_list(text):
    """The items of a Words or Features field: "dog, run, happy" -> ["dog", "run", "happy"]."""
    return [item.strip() for item in text.split(",")] if text else []


# -----------------------------------------------------------------------------
# reading record files

def iter_records(path):
    """Every record of a file as a Record, bad ones included (their problem says why). Streamed line
    by line: the published train file is 2.7 GB. Text after the last separator is a record cut off
    (a truncated file or download): a bad record like any other."""
    lines, first = [], 1  # the current record's lines (bytes, no line ends) and its first line's number
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            parts = raw.rstrip(b"\r\n").split(SEP.encode())
            lines.append(parts[0])
            for part in parts[1:]:  # each separator ends a record
                if any(line.strip() for line in lines):
                    yield parse_record(lines, first)
                lines, first = [part], number
    if any(line.strip() for line in lines):
        record = parse_record(lines, first)
        yield record._replace(problem=record.problem or f"no {SEP} after it (a record cut off at the end of the file)")


def parse_record(lines, first):
    """A Record from the lines (bytes, without line ends) of one record; first: the number of its
    first line in the file. Blank lines around fields are allowed; a field after the story ends it."""
    fields, story = {}, []
    at_story = after = None  # the numbers of the "Story:" line and of a field after the story
    start = first + next((i for i, line in enumerate(lines) if line.strip()), 0)
    for i, raw in enumerate(lines[start - first:], start):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return Record(fields, "", i, f"invalid UTF-8 at byte {e.start} of the line")
        m = _LINE.match(line)
        name, text = (m.group(1), m.group(2).strip()) if m else (None, line)
        if name == "Story":
            problem = f"a second {STORY}" if at_story else ""
            at_story = i
            story.append(text)
        elif name:
            problem = f"{name}: given twice" if name in fields else f"{name}: is empty" if not text else ""
            fields[name] = text
            after = after or (i if at_story else None)
        elif not line.strip():
            problem = ""
            story.append(line)
        elif not at_story:
            problem = f"expected a field ({', '.join(FIELDS)}) or {STORY}, got {line.strip()[:40]!r}"
        else:
            problem = f"story text after the field on line {after}, which follows the story" if after else ""
            story.append(line)
        if problem:
            return Record(fields, "", i, problem)
    text = "\n".join(story).strip()
    if not at_story or not text:
        problem = f"{STORY} with no story after it" if at_story else f"no {STORY} line"
        return Record(fields, "", at_story or start, problem)
    return Record(fields, text, start, "")


# -----------------------------------------------------------------------------
# what a story does: the words it uses, its dialogue

SUFFIXES = ("s", "es", "d", "ed", "ing", "er", "est", "ly")  # the regular inflections a word may carry


def base_forms(word):
    """The words (lower case) that `word` may be a regular inflection of, itself included: the word
    less one of SUFFIXES, if 3 letters or more are left, and that with its spelling undone: a final e
    put back (baked: bake), an i back to y (happily, tried: happy, try), a doubled consonant single
    (running, bigger: run, big). Some of these are no words; they match nothing a story writes."""
    w = word.lower()
    out = {w}
    for suffix in SUFFIXES:
        b = w[:-len(suffix)]
        if w.endswith(suffix) and len(b) >= 3:
            out |= {b, b + "e"} | ({b[:-1] + "y"} if b[-1] == "i" else set()) | \
                ({b[:-1]} if b[-1] == b[-2] and b[-1] not in "aeiou" else set())
    return out


def words_used(story, words):
    """For each requested word, whether the story uses it: a whole word of the story (a run of
    letters, case ignored) shares a base form with it (base_forms), so jump, jumps, jumped and jumping
    all use each other; irregular forms (ran, went, mice) do not count. A requested word that is not
    all letters ("x-ray") must appear as it is, case ignored, with no letter on either side."""
    lower = story.lower()
    bases = set().union(*map(base_forms, set(re.findall(r"[a-z]+", lower))))
    return [bool(base_forms(w) & bases) if w.isalpha() else
            re.search(rf"(?<![a-z]){re.escape(w.lower())}(?![a-z])", lower) is not None for w in words]


_QUOTED = re.compile(r"[\"\u201c\u201d][^\"\u201c\u201d\n]*[A-Za-z][^\"\u201c\u201d\n]*[\"\u201c\u201d]")


def has_dialogue(story):
    """Whether the story holds quoted speech: letters between two double quotes (straight or curly) on
    one line. Single quotes do not count: they are apostrophes as often as quotes."""
    return _QUOTED.search(story) is not None


# -----------------------------------------------------------------------------
# records from plain stories (the real instruct data cannot be had offline)

# words a request never names: function words, and the words in more than a quarter of the stories of
# tinystories-3000-stories.json (happy ... smiled, the last two lines), which nearly any story uses
STOPWORDS = frozenset("""
a about after again all also am an and any are around as at away back be because been before being
but by came can could did do does don down each even ever every for from get got had has have he her
here him his how into is it its just let like made make many more much must my never new no not now
of off on once one only or other our out over put said saw say see she so some than that the their
them then there these they this time to too took two up upon us very was way we went were what when
where which while who will with would yes you your day little big
happy named wanted play friends together fun played loved sad help looked girl found asked mom liked
felt friend boy started smiled""".split())


def _rng(story, seed):
    """A random generator of this story alone, so that a record does not depend on the others."""
    return random.Random(int.from_bytes(hashlib.blake2b(f"{seed}:{story}".encode(), digest_size=8).digest(), "little"))


def record_from_story(story, seed=0, most=3):
    """(fields, story): a record in the published format made from a plain story, or None when the
    story has fewer than 3 words to ask for. Words: 3 words of the story, picked at random (seeded by
    the story) among those it writes in lower case (so no names), of 3 letters or more, not in
    STOPWORDS and without an apostrophe (didn't), in story order. Features: Dialogue when the story
    has quoted speech (has_dialogue); no other feature can be told from the text. Random sentence: in
    about half the records, a sentence of the story, as in the published records. Summary: never (a
    summary cannot be derived honestly).
    most > 3 makes a denser training record instead: k such words, k drawn from 3 to min(most, all
    there are), so that more of the story can be told from its prompt (three words are few story
    tokens to learn copying from), and no Random sentence (the context is better spent on the story)."""
    rng = _rng(story, seed)
    lower = [w for w in dict.fromkeys(re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*", story))
             if w.isalpha() and w == w.lower() and len(w) >= 3 and w not in STOPWORDS]
    if len(lower) < 3:
        return None
    k = rng.randint(3, min(most, len(lower))) if most > 3 else 3
    picked = sorted(rng.sample(range(len(lower)), k))
    fields = {"Words": ", ".join(lower[i] for i in picked)}
    if has_dialogue(story):
        fields["Features"] = "Dialogue"
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", story) if len(s.split()) >= 4 and "\n" not in s]
    if sentences and most <= 3 and rng.random() < 0.5:
        fields["Random sentence"] = rng.choice(sentences)
    return fields, story.strip()


# -----------------------------------------------------------------------------
# the measure

def measure(records, generate):
    """How well stories follow their prompts. records: [(fields, story)], records the model never saw;
    each is asked for its Words and Features alone (prompt_text), and generate(prompts) returns, for
    each prompt, (the story written, whether it ended by itself rather than at a length limit).
    Counts: words / words_used: the words asked for, and those the stories use (words_used);
    asked_dialogue / dialogue_when_asked: the stories asked for Dialogue, and those with quoted speech
    (has_dialogue); not_asked / dialogue_when_not_asked: the same for the others (the base rate);
    ended: stories that ended by themselves. BadEnding and the other features are not measured: no
    honest detector of them is known."""
    prompts = [prompt_text(words=f.get("Words"), features=f.get("Features")) for f, _ in records]
    n = {"records": len(records), "words": 0, "words_used": 0, "asked_dialogue": 0, "dialogue_when_asked": 0,
         "not_asked": 0, "dialogue_when_not_asked": 0, "ended": 0}
    for (fields, _), (story, ended) in zip(records, generate(prompts)):
        words = split_list(fields.get("Words"))
        asked = "Dialogue" in split_list(fields.get("Features"))
        n["words"] += len(words)
        n["words_used"] += sum(words_used(story, words))
        n["asked_dialogue" if asked else "not_asked"] += 1
        n["dialogue_when_asked" if asked else "dialogue_when_not_asked"] += has_dialogue(story)
        n["ended"] += bool(ended)
    return n
