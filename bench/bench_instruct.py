"""Does a model follow TinyStoriesInstruct prompts? instruct.measure on records it never saw: the share of
the requested words its stories use, and how often it writes dialogue when asked for it and when not.

    python bench/bench_instruct.py make --input ../shared/data/tinystories --out data/instruct --copies 3
    python bench/bench_instruct.py measure --model out/ckpt.pt --records data/instruct/TinyStories-Instruct-valid.txt

make: instruct records in the published format from plain stories (instruct.record_from_story; the
real records cannot be downloaded offline), one story in HOLD_OUT (by a hash of its text) to
TinyStories-Instruct-valid.txt, the rest to TinyStories-Instruct-train.txt. pretokenize --dataset=instruct
takes the valid file as the validation split, so a model trained on the shards never trains on the
records measured. measure: each record's Words and Features as a prompt (its story is not shown), a
story generated from it (greedy by default; prompts of one length go through the model as a batch),
and the counts of instruct.measure; how much the model reads its prompt: the held-out stories' loss
after their own prompts and after the next record's; for scale, chance: each record's words against
the story of the next record (a story written to other words); --json writes them too.

Last logged runs: dev/LOG.md, "instruct tuning, continued" (and "instruct tuning of stories260K").
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


def held_out(story):
    return int.from_bytes(hashlib.blake2b(story.encode("utf-8"), digest_size=8).digest(), "little") % HOLD_OUT == 0


def make(inputs, out, seed, copies=1):
    """Write out/TinyStories-Instruct-{train,valid}.txt from the stories of inputs (each story once):
    a record of each held-out story, `copies` records of each other one (each asking for other words);
    and the same stories as plain text, out/stories-{train,valid}.txt, to train a plain model on."""
    seen, splits, skipped = set(), {"train": [], "valid": []}, 0
    plain = {"train": [], "valid": []}
    for f in ts.input_files(None, inputs=inputs):
        for story in ts.iter_stories(f):
            if story in seen:
                continue
            seen.add(story)
            split = "valid" if held_out(story) else "train"
            records = [instruct.record_from_story(story, seed + k) for k in range(1 if split == "valid" else copies)]
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


def generator(model, tok, temperature, seed, batch_size):
    """generate(prompts) for instruct.measure: [(story, ended by itself)], prompts of one token length
    batched, each story as long as the context allows."""
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
                                       temperature=temperature, stop_tokens=stops, generator=rng)
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

    torch.set_num_threads(args.threads)
    model, _, own = load_model(args.model, "cpu", own_tokenizer=args.tokenizer is None)
    tok = T.Tokenizer(args.tokenizer or own)
    records = [(r.fields, r.story) for r in instruct.iter_records(args.records) if not r.problem][:args.n]
    t0 = time.perf_counter()
    n = instruct.measure(records, generator(model.eval(), tok, args.temperature, args.seed, args.batch_size))
    seconds = time.perf_counter() - t0
    share = lambda a, b: f"{n[a]}/{n[b]} ({100 * n[a] / max(n[b], 1):.1f}%)"  # noqa: E731
    print(f"{args.model}: words used {share('words_used', 'words')}; quoted speech when asked for Dialogue "
          f"{share('dialogue_when_asked', 'asked_dialogue')}, when not "
          f"{share('dialogue_when_not_asked', 'not_asked')}; stories that ended by themselves "
          f"{share('ended', 'records')} ({seconds:.0f} s)")
    own, other = prompt_gain(model, tok, records)
    print(f"held-out story loss after its own prompt {own:.4f}, after another record's {other:.4f} nats/token")
    # chance: the held-out stories themselves, each scored against the next record's words
    others = [s for _, s in records[1:] + records[:1]]
    chance = instruct.measure(records, lambda prompts: [(s, True) for s in others])
    print(f"chance (each record's words against another record's story): words used {chance['words_used']}/"
          f"{chance['words']} ({100 * chance['words_used'] / max(chance['words'], 1):.1f}%)")
    if args.json:
        atomic_write(Path(args.json), (json.dumps({**n, "model": str(args.model), "seconds": round(seconds, 1),
                                                   "temperature": args.temperature, "chance_words_used":
                                                   chance["words_used"], "loss_own_prompt": own,
                                                   "loss_other_prompt": other}, indent=1) + "\n").encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="instruct records from plain stories")
    p.add_argument("--input", nargs="+", default=[str(REPO.parent / "shared" / "data" / "tinystories")],
                   help="story files or folders (default: ../shared/data/tinystories)")
    p.add_argument("--out", type=Path, required=True, help="where the two record files go")
    p.add_argument("--seed", type=int, default=0, help="picks the words and sentences of each record")
    p.add_argument("--copies", type=int, default=1, help="records of each training story, each with other words")
    p = sub.add_parser("measure", help="words used and dialogue, on held-out records")
    p.add_argument("--model", required=True, help="a train.py checkpoint or a run.c .bin model")
    p.add_argument("--tokenizer", default=None, help="its tokenizer, if not its own (as sample.py)")
    p.add_argument("--records", required=True, help="a file of records the model never trained on")
    p.add_argument("--n", type=int, default=200, help="the first this many good records")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--batch_size", type=int, default=16, help="prompts of one length generated together")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="also write the counts here")
    args = parser.parse_args()
    try:
        make(args.input, args.out, args.seed, args.copies) if args.command == "make" else measure(args)
    except (ValueError, OSError) as e:  # ts.DataError is a ValueError
        print(f"bench_instruct.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
