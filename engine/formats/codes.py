"""Error codes of the dataset report; line codes follow OpenAI's fine-tuning cookbook keys."""

from __future__ import annotations

INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
NOT_AN_OBJECT = "not_an_object"
MISSING_MESSAGES_LIST = "missing_messages_list"
MESSAGE_MISSING_KEY = "message_missing_key"
MESSAGE_UNRECOGNIZED_KEY = "message_unrecognized_key"
UNRECOGNIZED_ROLE = "unrecognized_role"
MISSING_CONTENT = "missing_content"
EXAMPLE_MISSING_ASSISTANT_MESSAGE = "example_missing_assistant_message"
INVALID_WEIGHT = "invalid_weight"
INVALID_PREFERENCE_OUTPUT = "invalid_preference_output"
MIXED_FORMATS = "mixed_formats"
UNKNOWN_FORMAT = "unknown_format"
LINE_TOO_LONG = "line_too_long"
# File-level codes (reported on line 0).
TOO_FEW_EXAMPLES = "too_few_examples"
EMPTY_FILE = "empty_file"
