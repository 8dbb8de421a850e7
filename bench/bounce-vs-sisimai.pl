#!/usr/bin/perl
# Throughput of sisimai (Perl, Debian's libsisimai-perl) in messages/s over a directory of
# messages: the counterpart of crates/proto/benches/bounce.rs, measured the same way.
#
# Every *.eml file of the directory is read into memory once (not timed); one untimed warm-up
# round parses them all (it also loads the sisimai modules that the messages need); then all of
# them are parsed, in name order, round after round, and only the parsing is timed.
#
# Each message is parsed the way Sisimai->make parses each message it reads from a Maildir/
# (Sisimai.pm, v4.25): Sisimai::Message->new(data => TEXT), then Sisimai::Data->make on the
# result; only the reading of the file by Sisimai::Mail is left out. (Sisimai->make(\TEXT),
# the in-memory form of the public API, would split a message that starts with an mbox "From "
# line at every later line starting with "From ", which two of the corpus's files have: set
# SISIMAI_API=make to time that form anyway.)
#
# Usage: bench/bounce-vs-sisimai.pl [DIR]   (default: DIR = $BOUNCE_DIR, or the sisimai
#        corpus's maildir/bsd in crates/proto/tests/data)
# Environment: ROUNDS (exactly this many timed rounds), MIN_SECS (otherwise: rounds until at
#        least MIN_SECS seconds, default 2, and at least 3), SISIMAI_API (message or make).
# Output, last line machine-readable:
#        sisimai files=F rounds=K messages=N seconds=S rate=R
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use Time::HiRes qw(time);
use Sisimai;
use Sisimai::Message;
use Sisimai::Data;

my $here = dirname(abs_path(__FILE__));
my $dir  = $ARGV[0] // $ENV{BOUNCE_DIR}
    // abs_path("$here/../crates/proto/tests/data/sisimai/maildir/bsd");
die "the corpus directory is missing (give DIR or BOUNCE_DIR)\n" unless defined $dir;
my $api  = $ENV{SISIMAI_API} // 'message';
die "SISIMAI_API must be 'message' or 'make'\n" unless $api eq 'message' || $api eq 'make';
my $fixed = $ENV{ROUNDS};
$fixed = undef if defined $fixed && $fixed !~ /\A[1-9][0-9]*\z/;
my $min_secs = $ENV{MIN_SECS} // 2;
$min_secs = 2 unless $min_secs =~ /\A[0-9]+(?:\.[0-9]+)?\z/;

opendir(my $dh, $dir) or die "$dir: $!\n";
my @names = sort grep { /\.eml\z/ && -f "$dir/$_" } readdir $dh;
closedir $dh;
die "no *.eml file in $dir\n" unless @names;

my @messages;
my $bytes = 0;
for my $name (@names) {
    open(my $fh, '<:raw', "$dir/$name") or die "$dir/$name: $!\n";
    my $text = do { local $/; <$fh> };
    close $fh;
    $bytes += length $text;
    push @messages, $text;
}

# One message: what Sisimai->make does for each message it reads; returns the number of
# Sisimai::Data records (one per failed recipient).
sub parse_message {
    my $text = shift;
    if ($api eq 'make') {
        my $list = Sisimai->make(\$text);
        return $list ? scalar @$list : 0;
    }
    my $mesg = Sisimai::Message->new('data' => $text, 'hook' => undef) or return 0;
    my $data = Sisimai::Data->make('data' => $mesg, 'delivered' => undef, 'origin' => 'MEMORY');
    return $data ? scalar @$data : 0;
}

# Warm-up, untimed; also what sisimai found, for the report.
my ($bounces, $records) = (0, 0);
for my $text (@messages) {
    my $n = parse_message($text);
    $bounces += 1 if $n;
    $records += $n;
}

my $rounds = 0;
my @per_round;
my $start = time;
while (1) {
    my $t = time;
    parse_message($_) for @messages;
    push @per_round, time - $t;
    $rounds += 1;
    last if defined $fixed ? $rounds >= $fixed : ($rounds >= 3 && time - $start >= $min_secs);
}
my $seconds = time - $start;

my $n      = scalar @messages;
my $total  = $n * $rounds;
my $rate   = $total / $seconds;
my @sorted = sort { $a <=> $b } @per_round;
my $median = $sorted[int(@sorted / 2)];
printf "sisimai %s (%s): %d files (%.1f MiB) from %s; %d with results, %d records; "
    . "%d rounds in %.3f s: %.0f messages/s (%.1f µs a message; median round %.1f ms, "
    . "%.0f messages/s; %.2f MiB/s)\n",
    Sisimai->version, $api eq 'make' ? 'Sisimai->make(\\TEXT)' : 'Sisimai::Message + Sisimai::Data',
    $n, $bytes / 1048576, $dir, $bounces, $records, $rounds, $seconds, $rate, 1e6 / $rate,
    $median * 1e3, $n / $median, $bytes * $rounds / $seconds / 1048576;
printf "sisimai files=%d rounds=%d messages=%d seconds=%.6f rate=%.1f\n",
    $n, $rounds, $total, $seconds, $rate;
