"""Text for people: how the commands' results are rendered (handlers compute, these
modules produce the text; the role of pyelftools' ``descriptions``)."""
