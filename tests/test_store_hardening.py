"""The session store against damaged or surprising state: files of the wrong kind, transcripts
under another session's name, empty leftovers, and errors that say what failed.

Each case builds the state on disk, opens a ``SessionStore`` (or a committer)
on it in-process, and checks what start-up and the next turn do: nothing that
was recorded is lost or hidden, and start-up never hangs or reads without bound.
"""

from __future__ import annotations

import os
import unittest

from equabot_gw.agents import committer


class CommitterFlags(unittest.TestCase):
    def test_files_are_opened_close_on_exec(self) -> None:
        # A child process (a provider's helper) must not inherit transcript fds.
        self.assertEqual(committer.CLOEXEC, os.O_CLOEXEC)
        self.assertTrue(committer._APPEND_FLAGS & os.O_CLOEXEC)


if __name__ == "__main__":
    unittest.main()
