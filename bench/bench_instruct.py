"""Does a model follow TinyStoriesInstruct prompts? instruct.measure on records it never saw: the share of
the requested words its stories use, and how often it writes dialogue when asked for it and when not.

    python bench/bench_instruct.py make --input ../shared/data/tinystories --out data/instruct --copies 1 --dense 4
    python bench/bench_instruct.py measure --model out/ckpt.pt --records data/instruct/TinyStories-Instruct-valid.txt

make: instruct records in the published format from plain stories (instruct.record_from_story; the
real records cannot be downloaded offline), with --dense denser ones for training (more of each story's
words asked for), one story in HOLD_OUT (by a hash of its text) to
TinyStories-Instruct-valid.txt, the rest to TinyStories-Instruct-train.txt. pretokenize --dataset=instruct
takes the valid file as the validation split, so a model trained on the shards never trains on the
records measured. measure: each record's Words and Features as a prompt (its story is not shown), a
story generated from it (greedy by default; prompts of one length go through the model as a batch),
and the counts of instruct.measure; how much the model reads its prompt: the held-out stories' loss
after their own prompts and after the next record's; for scale, chance: each record's words against
the story the model wrote for the next record (the same generator, asked for other words), and
against the next held-out story itself; --json writes them too. Greedy by default; --temperature 1
(with --top_p 0.9, as sample.py and run.c) shows more of what was learned: a requested word made ten
times likelier is seldom the likeliest token, but over a story's 200 sampled tokens it often comes.

Last logged runs: dev/LOG.md, "instruct tuning with denser records" (make --dense, greedy and sampled);
before it "instruct tuning, continued" and "instruct tuning of stories260K".
"""
import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import instruct  # noqa: E402  (flat scripts: the repo root is not a package)
import tinystories as ts  # noqa: E402
from fileio import atomic_write  # noqa: E402

HOLD_OUT = 10  # one story in 10 makes a held-out (valid) record
DENSE_WORDS = 32  # make --dense: the most words a denser record asks for (about 150 tok512 tokens of prompt)


def held_out(story):
    return int.from_bytes(hashlib.blake2b(story.encode("utf-8"), digest_size=8).digest(), "little") % HOLD_OUT == 0


def make(inputs, out, seed, copies=1, dense=0, most=DENSE_WORDS):
    """Write out/TinyStories-Instruct-{train,valid}.txt from the stories of inputs (each story once):
    a record of each held-out story, `copies` records of each other one (each asking for other words)
    and `dense` denser ones (up to `most` words each: instruct.record_from_story's most); and the same
    stories as plain text, out/stories-{train,valid}.txt, to train a plain model on. Held-out records
    are always in the published format (3 words)."""
    if copies < 1 or dense < 0 or most < 3:
        raise ValueError(f"--copies {copies}, --dense {dense}, --dense_words {most}: expected --copies >= 1, "
                         "--dense >= 0 and --dense_words >= 3")
    seen, splits, skipped = set(), {"train": [], "valid": []}, 0
    plain = {"train": [], "valid": []}
    for f in ts.input_files(None, inputs=inputs):
        for story in ts.iter_stories(f):
            if story in seen:
                continue
            seen.add(story)
            split = "valid" if held_out(story) else "train"
            n = (1, 0) if split == "valid" else (copies, dense)
            records = [instruct.record_from_story(story, seed + k) for k in range(n[0])] + \
                [instruct.record_from_story(story, seed + n[0] + k, most) for k in range(n[1])]
            if records[0] is None:
                skipped += 1
                continue
            splits[split] += [instruct.record_text(*r) for r in records]
            plain[split].append(f"{story}\n{instruct.SEP}\n")
    out.mkdir(parents=True, exist_ok=True)
    for split, texts in splits.items():
        atomic_write(out / f"TinyStories-Instruct-{split}.txt", "".join(texts).encode("utf-8"))
        atomic_write(out / f"stories-{split}.txt", "".join(plain[split]).encode("utf-8"))
    print(f"{len(splits['train']):,} train and {len(splits['valid']):,} valid records in {out} "
          f"({skipped} stories with fewer than 3 words to ask for left out)")


def generator(model, tok, temperature, top_p, seed, batch_size):
    """generate(prompts) for instruct.measure: [(story, ended by itself)], prompts of one token length
    batched, each story as long as the context allows; sampled as sample.py does (temperature 0:
    greedy)."""
    import torch

    stops = tok.stops()
    rng = torch.Generator().manual_seed(seed)

    def generate(prompts):
        ids = [tok.prompt(p) for p in prompts]
        by_length = defaultdict(list)
        for i, x in enumerate(ids):
            by_length[len(x)].append(i)
        out = [None] * len(prompts)
        for n, rows in sorted(by_length.items()):
            for k in range(0, len(rows), batch_size):
                chunk = rows[k:k + batch_size]
                with torch.no_grad():
                    y = model.generate(torch.tensor([ids[i] for i in chunk]), model.args.max_seq_len - n,
                                       temperature=temperature, top_p=top_p, stop_tokens=stops, generator=rng)
                for i, row in zip(chunk, y[:, n:].tolist()):
                    end = next((j for j, t in enumerate(row) if t in stops), None)
                    out[i] = (tok.decode(row[:end]), end is not None)
        return out
    return generate


def prompt_gain(model, tok, records):
    """Mean loss (nats per story token, EOS included) of each held-out story after its own prompt
    (Words and Features, as measured), and after the next record's: how much the model reads the
    prompt, even where greedy stories do not show it."""
    import torch

    out = []
    for shift in (0, 1):
        total = 0.0
        for i, (_, story) in enumerate(records):
            fields = records[(i + shift) % len(records)][0]
            p = tok.prompt(instruct.prompt_text(words=fields.get("Words"), features=fields.get("Features")))
            ids = (p + tok.encode(story, bos=False, eos=True))[:model.args.max_seq_len + 1]
            x, y = torch.tensor([ids[:-1]]), torch.tensor([[-1] * (len(p) - 1) + ids[len(p):]])
            with torch.no_grad():
                total += model(x, y)[1].item()
        out.append(total / len(records))
    return out


def measure(args):
    import torch

    from sample import load_model
    import tokenizer as T

    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.n < 2:
        raise ValueError(f"--temperature {args.temperature}, --top_p {args.top_p}, --n {args.n}: expected "
                         "--temperature >= 0, 0 < --top_p <= 1 and --n >= 2")
    torch.set_num_threads(args.threads)
    model, _, own = load_model(args.model, "cpu", own_tokenizer=args.tokenizer is None)
    tok = T.Tokenizer(args.tokenizer or own)
    records = [(r.fields, r.story) for r in instruct.iter_records(args.records) if not r.problem][:args.n]
    if len(records) < 2:
        raise ValueError(f"{args.records}: {len(records)} good records; the measure needs 2 or more")
    generate, stories = generator(model.eval(), tok, args.temperature, args.top_p, args.seed, args.batch_size), []

    def kept(prompts):  # generate, keeping the stories for this generator's chance
        stories[:] = generate(prompts)
        return stories
    t0 = time.perf_counter()
    n = instruct.measure(records, kept)
    seconds = time.perf_counter() - t0
    share = lambda a, b: f"{n[a]}/{n[b]} ({100 * n[a] / max(n[b], 1):.1f}%)"  # noqa: E731
    how = f"temperature {args.temperature}, top-p {args.top_p}" if args.temperature > 0 else "greedy"
    print(f"{args.model} ({how}): words used {share('words_used', 'words')}; quoted speech when asked for "
          f"Dialogue {share('dialogue_when_asked', 'asked_dialogue')}, when not "
          f"{share('dialogue_when_not_asked', 'not_asked')}; stories that ended by themselves "
          f"{share('ended', 'records')} ({seconds:.0f} s)")
    own, other = prompt_gain(model, tok, records)
    print(f"held-out story loss after its own prompt {own:.4f}, after another record's {other:.4f} nats/token")
    chance = {"chance_words_used": chance_words(records, stories),  # of this generator: what asking adds
              "chance_held_out_stories": chance_words(records, [(s, True) for _, s in records])}
    print(f"chance (each record's words against the story written for the next record): words used "
          f"{chance['chance_words_used']}/{n['words']} ({100 * chance['chance_words_used'] / n['words']:.1f}%); "
          f"against the next held-out story itself {chance['chance_held_out_stories']}/{n['words']}")
    if args.json:
        atomic_write(Path(args.json), (json.dumps({**n, **chance, "model": str(args.model), "seconds":
                                                   round(seconds, 1), "temperature": args.temperature,
                                                   "top_p": args.top_p, "loss_own_prompt": own,
                                                   "loss_other_prompt": other}, indent=1) + "\n").encode())


def chance_words(records, stories):
    """The words of each record that the story of the next record uses (stories: [(story, ended)], one
    a record): the share of requested words a story not written for them holds."""
    return instruct.measure(records, lambda prompts: stories[1:] + stories[:1])["words_used"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="instruct records from plain stories")
    p.add_argument("--input", nargs="+", default=[str(REPO.parent / "shared" / "data" / "tinystories")],
                   help="story files or folders (default: ../shared/data/tinystories)")
    p.add_argument("--out", type=Path, required=True, help="where the two record files go")
    p.add_argument("--seed", type=int, default=0, help="picks the words and sentences of each record")
    p.add_argument("--copies", type=int, default=1, help="records of each training story, each with other words")
    p.add_argument("--dense", type=int, default=0, help="and this many denser records of each training story, "
                   "each asking for 3 to --dense_words of its words")
    p.add_argument("--dense_words", type=int, default=DENSE_WORDS, help="the most words a denser record asks for")
    p = sub.add_parser("measure", help="words used and dialogue, on held-out records")
    p.add_argument("--model", required=True, help="a train.py checkpoint or a run.c .bin model")
    p.add_argument("--tokenizer", default=None, help="its tokenizer, if not its own (as sample.py)")
    p.add_argument("--records", required=True, help="a file of records the model never trained on")
    p.add_argument("--n", type=int, default=200, help="the first this many good records")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (sample.py and run.c default to 1.0)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling, as sample.py and run.c (1.0: off)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--batch_size", type=int, default=16, help="prompts of one length generated together")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="also write the counts here")
    args = parser.parse_args(argv)
    try:
        make(args.input, args.out, args.seed, args.copies, args.dense, args.dense_words) if args.command == "make" \
            else measure(args)
    except (ValueError, OSError) as e:  # ts.DataError is a ValueError
        print(f"bench_instruct.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
