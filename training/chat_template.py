"""The Qwen2.5-VL chat format, written here for tokenizers that do not ship a template.

Real Qwen2.5-VL folders carry their own template (chat_template.jinja/json); the tiny models
built by `training.tiny_model` get this one, which renders the same text: a default system turn,
`<|im_start|>role\\n...<|im_end|>\\n` turns, and one `<|vision_start|><|video_pad|><|vision_end|>`
per video item (expanded to the real token count by `training.prompts`).
"""

QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
