"""The README's picture: held-out prompts (one per category) and the model's generations, each marked by the
exact verifier (green frame: accepted, red: rejected).

    python docs/generation_grid.py [--model tiny] [--samples 6] [--seed 0] [--out docs/tiny_generations.png]
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw

from unigap.model import load_model
from unigap.world import CATEGORIES, parse_prompt, sample_records, verify

SCALE, PAD, LABEL = 2, 4, 230  # image magnification, frame width, width of the prompt column


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/tiny_generations.png")
    args = parser.parse_args()
    um = load_model(args.model)
    prompts = [sample_records(1, 0, "test", category=c, draw_seed=args.seed)[0][0].text for c in CATEGORIES]
    tokens = um.generate_images(prompts, n_per_prompt=args.samples, seed=args.seed)
    images = um.decode_tokens(tokens)
    cell = images[0].width * SCALE + 2 * PAD
    sheet = Image.new("RGB", (LABEL + cell * args.samples, cell * len(prompts)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, prompt in enumerate(prompts):
        draw.text((6, row * cell + cell // 2 - 6), prompt, fill="black")
        for col in range(args.samples):
            image = images[row * args.samples + col]
            ok = verify(image, parse_prompt(prompt)).satisfied
            x, y = LABEL + col * cell, row * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(40, 170, 40) if ok else (200, 20, 20))
            sheet.paste(image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST), (x + PAD, y + PAD))
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
