/* A milter that does nothing: every step it is shown answers continue. */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static sfsistat cont_hdr(SMFICTX *c, char *n, char *v) { return SMFIS_CONTINUE; }
static sfsistat cont_body(SMFICTX *c, unsigned char *b, size_t l) { return SMFIS_CONTINUE; }
static sfsistat cont(SMFICTX *c) { return SMFIS_CONTINUE; }
static sfsistat cont_args(SMFICTX *c, char **a) { return SMFIS_CONTINUE; }
static sfsistat neg(SMFICTX *c, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
                    unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
  *pf0 = SMFIF_ADDHDRS | SMFIF_ADDRCPT | SMFIF_DELRCPT | SMFIF_QUARANTINE | SMFIF_CHGFROM;
  /* no reply but at the end of the message, as backstop asks */
  *pf1 = f1 & (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA |
               SMFIP_NR_UNKN | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_NODATA);
  *pf2 = 0; *pf3 = 0;
  return SMFIS_CONTINUE;
}
int main(int argc, char **argv) {
  struct smfiDesc d;
  memset(&d, 0, sizeof d);
  d.xxfi_name = "null";
  d.xxfi_version = SMFI_VERSION;
  d.xxfi_flags = SMFIF_ADDHDRS | SMFIF_ADDRCPT | SMFIF_DELRCPT | SMFIF_QUARANTINE | SMFIF_CHGFROM;
  d.xxfi_envfrom = cont_args; d.xxfi_envrcpt = cont_args;
  d.xxfi_header = cont_hdr; d.xxfi_eoh = cont; d.xxfi_body = cont_body; d.xxfi_eom = cont;
  d.xxfi_negotiate = neg;
  if (argc < 2) { fprintf(stderr, "usage: null-milter inet:PORT@127.0.0.1\n"); return 2; }
  smfi_setconn(argv[1]);
  if (smfi_register(d) == MI_FAILURE) return 1;
  return smfi_main() == MI_SUCCESS ? 0 : 1;
}
