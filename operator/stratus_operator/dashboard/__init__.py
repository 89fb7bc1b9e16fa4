"""The web dashboard (the Horizon part): server-rendered pages, live over Server-Sent Events,
every call made with the signed-in user's own token; served with the console proxy."""
