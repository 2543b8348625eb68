"""The tiny Qwen2.5-VL built in code, fully offline: a byte-level tokenizer with the chat template, an image
processor without torchvision, and the model config in three sizes. model.load("tiny-init") builds it from a seed;
the shipped pretrained base (checkpoints/tiny-base) was made from it (see its card).
"""
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2_5_VLProcessor)

# The step tag every script shares (model.py: the step-tag convention), a special token of the tiny tokenizer.
STEP_TAG = "<|step|>"

# Tiny sizes. mrope_section must sum to head_dim / 2 (hidden / heads / 2).
SIZES = {
    "small": dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=256, vis_hidden=64, vis_depth=2, vis_heads=4,
                  mrope=[2, 3, 3]),
    "deep": dict(hidden=64, layers=4, heads=4, kv_heads=2, ffn=256, vis_hidden=64, vis_depth=2, vis_heads=4,
                 mrope=[2, 3, 3]),
    "base": dict(hidden=192, layers=4, heads=6, kv_heads=2, ffn=512, vis_hidden=96, vis_depth=3, vis_heads=4,
                 mrope=[4, 6, 6]),
}
IMAGE_SIZE, PATCH = 64, 8  # 64 px images, 8 px patches: the synthetic suite aligns every shape to this grid
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>", STEP_TAG]
# Whole words the suite uses a lot, matched before byte-level splitting: sequences ~3x shorter, decoding exact.
# No word carries a space, so a prefix that ends in a space tokenizes as it did in training.
WORDS = ["There are", "The answer is", "Step", "red", "blue", "green", "yellow", "shapes", "How many", "more",
         "than", "total", "width", "height", "perimeter", "rectangle", "costs", "each", "pens", "book", "dollars",
         "What is", "pays", "user", "assistant"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    """A byte-level tokenizer built in code: 256 byte tokens, the specials, a few whole words. Round-trips any text."""
    alphabet = sorted(ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.add_tokens(WORDS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=4096)
    fast.padding_side = "left"  # generation pads on the left; scoring builds its own masks
    return fast


def image_text_processor(image_processor, tokenizer, chat_template):
    """A Qwen2.5-VL processor without the video processor (which needs torchvision). Images and text only."""
    class ImageTextProcessor(Qwen2_5_VLProcessor):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    return ImageTextProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def tiny_processor():
    try:
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor  # no torchvision needed
    except ImportError:
        from transformers import Qwen2VLImageProcessor as ImageProcessor
    ip = ImageProcessor(patch_size=PATCH, merge_size=2, temporal_patch_size=2,
                        min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE)
    return image_text_processor(ip, tiny_tokenizer(), CHAT_TEMPLATE)


def tiny_config(tokenizer, size="small"):
    s = SIZES[size]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    text = dict(vocab_size=len(tokenizer), hidden_size=s["hidden"], intermediate_size=s["ffn"],
                num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                max_position_embeddings=4096, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": s["mrope"]},
                bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=s["vis_depth"], hidden_size=s["vis_hidden"], intermediate_size=2 * s["vis_hidden"],
                  num_heads=s["vis_heads"], patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2,
                  window_size=IMAGE_SIZE, fullatt_block_indexes=[s["vis_depth"] - 1], out_hidden_size=s["hidden"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
                            bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                            pad_token_id=ids["<|endoftext|>"])


def tiny_init(size="small", seed=0):
    processor = tiny_processor()
    torch.manual_seed(seed)  # same seed, same weights (a test checks it)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(processor.tokenizer, size))
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model, processor
