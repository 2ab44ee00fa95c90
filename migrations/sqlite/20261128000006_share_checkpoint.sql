-- Where a publish in several steps resumes on a later attempt of the same share (Instagram and
-- Threads: the media container id), written before the step that has an effect.
ALTER TABLE shares ADD COLUMN checkpoint TEXT;
