"""Users' own data files (prompts, understanding data, captioned images, preference pairs' tables): reading them,
with one error per malformed row naming file and line. Lower than the model: nothing here loads one."""
