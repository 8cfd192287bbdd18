/**
 * Chat messages rendered into one prompt with the model's own chat template
 * (a Jinja template, as Hugging Face models declare it in
 * `tokenizer_config.json`'s `chat_template`), by `@huggingface/jinja`, the
 * library Hugging Face renders these templates with in JavaScript.
 */
import { Template } from '@huggingface/jinja';
import { invalidArgument } from '@maas/shared';

export interface ChatMessage {
  role: string;
  content: string;
}

export class ChatTemplate {
  private readonly template: Template;

  /** Throws when the template does not parse (the catalogue reports the model as unservable). */
  constructor(
    source: string,
    private readonly tokens: { bosToken: string; eosToken: string },
  ) {
    this.template = new Template(source);
  }

  /** The prompt that asks the model for the assistant's next message. */
  render(messages: readonly ChatMessage[]): string {
    try {
      return this.template.render({
        messages,
        add_generation_prompt: true,
        bos_token: this.tokens.bosToken,
        eos_token: this.tokens.eosToken,
      });
    } catch (error) {
      // Templates raise on what they do not accept (roles out of order, say): the caller's input.
      throw invalidArgument(
        'messages',
        `the model's chat template refused them: ${(error as Error).message}`,
      );
    }
  }
}
