"""The prompts every tokenizer parity test encodes: a few hundred varied ones, the same every run, and
a few around special tokens."""
import random


def prompts():
    """A few hundred varied prompts, the same every run."""
    rnd = random.Random(1234)
    fixed = ["", " ", "  ", "\n", "\t", "a", " a", "a ", "  hello   world  ", "Hello, World!", "12345",
             "3.14159 and 2,718", "x\u2581y", "\u2581", "\u2581\u2581a", "a\u2581", "<s>hi</s>", "<0x41><unk>",
             "caf\u00e9 na\u00efve \u00fcber", "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c", "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
             "\u0645\u0631\u062d\u0628\u0627", "\U0001F600\U0001F680 emoji!", "\U0001F468\u200D\U0001F469\u200D\U0001F467",
             "\U0001F1EB\U0001F1F7", "e\u0301\u0302", "tab\tsep\tvalues", "line1\nline2\r\nline3", "\x01\x02\x7f",
             "Once upon a time, there was a little girl named Lily.", "   leading", "trailing   ",
             "a  b   c    d", " \n \t ", "\u3000ideographic\u3000space", "\u00a0nbsp\u00a0", "ÿþ", "\uffff\ufffd"]
    pool = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789   ,.!?'\"-\n\t") + \
        ["\u00e9", "\u00f1", "\u4e2d", "\u6587", "\U0001F600", "\u2581", "  ", "\u0416", "<", ">", "\u00a0"]
    words = ("the little dog ran to the park and saw a big red ball . she was happy ! "
             "Tim said : \" I want to play \" 42 1999").split(" ")
    out = list(fixed)
    for _ in range(130):
        out.append("".join(rnd.choice(pool) for _ in range(rnd.randint(1, 40))))
    for _ in range(130):
        sep = rnd.choice([" ", " ", " ", "  ", "\n", " \n "])
        out.append(sep.join(rnd.choice(words) for _ in range(rnd.randint(1, 25))))
    return out


SPECIAL = ["<|start_story|>Once upon a time, ", "a<|end_story|>b", "<|end_story|><|start_story|>", "x <|start_story|> y",
           "<|start_story|", "  <|end_story|>  ", "<|start_story|><|start_story|>z", "The end.<|end_story|>\n<|start_story|>Tom"]
