"""Beat Saber output: level folders and zips, info and difficulty JSON, Ogg Vorbis audio, PNG covers."""
