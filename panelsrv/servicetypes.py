"""The service types of the SMM panel API v2 (the `type` a service reports). Leaf module."""

from typing import Final

SERVICE_TYPES: Final = (
    "default", "Package", "Custom Comments", "Custom Comments Package", "Mentions",
    "Mentions with Hashtags", "Mentions Custom List", "Mentions Hashtag",
    "Mentions User Followers", "Mentions Media Likers", "Subscriptions", "Poll",
    "Comment Likes", "Comment Replies",
)  # fmt: skip
# Types charged a flat rate per order, whose quantity is always 1.
PACKAGE_TYPES: Final = frozenset({"Package", "Custom Comments Package"})
