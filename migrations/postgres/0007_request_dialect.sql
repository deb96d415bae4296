-- The client dialect of each logged request (`anthropic`, `openai`); older rows are Anthropic's.
ALTER TABLE requests ADD COLUMN dialect TEXT;
