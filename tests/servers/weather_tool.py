"""The get_weather tool as the two OpenAI request shapes spell it, for policy-server tests."""

CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                              "parameters": {"type": "object", "required": ["city"],
                                                             "properties": {"city": {"type": "string"}}}}}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city.", "strict": True,
                  "parameters": {"type": "object", "required": ["city"], "additionalProperties": False,
                                 "properties": {"city": {"type": "string"}}}}
