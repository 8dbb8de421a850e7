#!/usr/bin/perl
# Regenerates reason_cases.tsv (the cases of tests/bounce_reason.rs): for every failed recipient
# of the sisimai corpus that has a gold label, what sisimai 4.25 (Debian libsisimai-perl)
# decoded from the bounce (status, reply code, action, diagnostic text) next to the gold reason
# and hard/soft. The corpus is sisimai's (BSD 2-Clause): see LICENSE-sisimai.
#
#   perl make_reason_cases.pl /work/shared/corpora/sisimai > reason_cases.tsv
#
# Rows are joined to labels.tsv by file and recipient: the record whose address is the label's
# silver_recipient, else the n-th record for recipient_index n. Column `decoded`:
#   1  sisimai 4.25 decoded the recipient;
#   2  it could not (the DragonFly Mail Agent files, which it predates): status and reply code
#      are the gold ones, the diagnostic is the text DMA wrote between "There was an error
#      delivering your mail to <...>." and "Message headers follow." (or
#      "Original message follows.");
#   0  neither: gold status and reply code, empty diagnostic.
# A status of the form X.0.9NN is sisimai's own code for the reason it chose (none of the
# bounces says one): it would give the answer away, so it is left empty, as a parser that
# reads only the bounce would have it.
use strict;
use warnings;
use Sisimai;

my $root = shift // '/work/shared/corpora/sisimai';
open my $fh, '<', "$root/labels.tsv" or die "labels.tsv: $!";
my $head = <$fh>;
chomp $head;
my @cols = split /\t/, $head;
my (%rows, @files);
while (my $line = <$fh>) {
    chomp $line;
    my %r;
    @r{@cols} = split /\t/, $line, -1;
    next unless $r{has_gold};
    push @files, $r{file} unless $rows{$r{file}};
    push @{$rows{$r{file}}}, \%r;
}
close $fh;

sub flat {
    my $s = shift // '';
    $s =~ s/[\t\r\n]+/ /g;
    $s =~ s/ {2,}/ /g;
    $s =~ s/^\s+|\s+$//g;
    return $s;
}

# The DragonFly Mail Agent's explanation, without its first line.
sub dma_text {
    my $path = shift;
    open my $in, '<', $path or return '';
    my ($on, @text) = (0);
    while (my $l = <$in>) {
        last if $on && $l =~ /^(?:Message headers|Original message) follow/;
        push @text, $l if $on > 1;
        $on++ if $on || $l =~ /^There was an error delivering your mail to/;
    }
    return flat(join ' ', @text);
}

print join("\t", qw(file recipient_index decoded recipient status replycode action diagnostic
    gold_reason gold_hardbounce)), "\n";
for my $file (@files) {
    my $v = eval { Sisimai->make("$root/$file", delivered => 1) } // [];
    for my $r (@{$rows{$file}}) {
        my ($e) = grep { lc $_->recipient->address eq lc $r->{silver_recipient} } @$v;
        $e //= $v->[$r->{recipient_index} - 1];
        my @out;
        if ($e) {
            @out = (1, $e->recipient->address, flat($e->deliverystatus), flat($e->replycode),
                flat($e->action), flat($e->diagnosticcode));
        } else {
            my $text = $file =~ /lhost-dragonfly/ ? dma_text("$root/$file") : '';
            @out = ($text eq '' ? 0 : 2, $r->{silver_recipient}, $r->{gold_deliverystatus},
                $r->{gold_replycode}, '', $text);
        }
        $out[2] = '' if $out[2] =~ /^[245]\.0\.9[0-9][0-9]$/;
        print join("\t", $file, $r->{recipient_index}, @out, $r->{gold_reason},
            $r->{gold_hardbounce}), "\n";
    }
}
